"""`python -m premem`: how torchrun and accelerate launch premem on several processes, e.g.
`torchrun --nproc_per_node 4 -m premem sweep --params params/llama3-8b_gsm8k.yaml`."""
import sys

from premem.cli import main

if __name__ == "__main__":  # not in a spawned process, which imports this module again
    sys.exit(main())
