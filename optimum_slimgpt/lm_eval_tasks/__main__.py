"""``python -m optimum_slimgpt.lm_eval_tasks --out DIR``: write the local lm-eval task YAMLs."""

import sys

from . import main

sys.exit(main())
