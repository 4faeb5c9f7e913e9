"""A torchrun worker that runs several genflow-eval commands in one process group (one start-up for
all): the commands are a JSON list of argument lists in $EVAL_COMMANDS (torchrun's own parser would
take their flags for its own); exits with the largest status."""

import json
import os
import sys

from genflow.cli.evaluate import main
from genflow.training import distributed

if __name__ == "__main__":
    distributed.setup("cpu")
    codes = [main(argv) for argv in json.loads(os.environ["EVAL_COMMANDS"])]
    sys.stdout.flush()
    distributed.cleanup(wait=True)
    sys.exit(max(codes))
