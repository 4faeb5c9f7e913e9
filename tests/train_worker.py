"""A training worker for the distributed tests: trains, then every rank dumps its parameters,
where and why it stopped, and whether its process group was freed at cleanup (not left to the
interpreter's exit); it exits as genflow-train does.

    torchrun --nproc_per_node=2 tests/train_worker.py KEY=VALUE ...
"""

import json
import sys
import weakref
from pathlib import Path

import torch
import torch.distributed as dist

from genflow.training import distributed
from genflow.training.config import compose
from genflow.training.trainer import Trainer

if __name__ == "__main__":
    trainer = Trainer(compose(sys.argv[1:]))
    group = weakref.ref(dist.group.WORLD) if distributed.active() else None
    trainer.fit()
    params = {k: v.detach().cpu() for k, v in trainer.net.state_dict().items()}
    torch.save(params, Path(trainer.run_dir) / f"params_rank{trainer.dist.rank}.pt")
    stopped = {"step": trainer.step, "stopped": trainer.stopped}
    (Path(trainer.run_dir) / f"stopped_rank{trainer.dist.rank}.json").write_text(json.dumps(stopped))
    trainer.close()
    distributed.cleanup()
    freed = group is not None and group() is None
    (Path(trainer.run_dir) / f"cleanup_rank{trainer.dist.rank}.json").write_text(json.dumps({"group_freed": freed}))
    sys.exit(trainer.exit_code)
