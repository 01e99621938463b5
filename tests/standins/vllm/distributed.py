"""vllm.distributed's teardown, as vLLM's own tests call it between engines: here it only counts."""
import vllm


def destroy_model_parallel():
    vllm.TEARDOWNS.append("model_parallel")


def destroy_distributed_environment():
    vllm.TEARDOWNS.append("distributed_environment")
