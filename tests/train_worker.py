"""A training worker for the distributed tests: trains, then every rank dumps its parameters.

    torchrun --nproc_per_node=2 tests/train_worker.py KEY=VALUE ...
"""

import sys
from pathlib import Path

import torch

from genflow.training import distributed
from genflow.training.config import compose
from genflow.training.trainer import Trainer

if __name__ == "__main__":
    trainer = Trainer(compose(sys.argv[1:]))
    trainer.fit()
    params = {k: v.detach().cpu() for k, v in trainer.net.state_dict().items()}
    torch.save(params, Path(trainer.run_dir) / f"params_rank{trainer.dist.rank}.pt")
    distributed.cleanup()
