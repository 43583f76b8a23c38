"""Importing the model code leaves the process's warnings and logging as they were."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import logging, warnings
import peft, transformers
before = (len(warnings.filters), logging.getLogger("transformers").level)
import ml.modeling
after = (len(warnings.filters), logging.getLogger("transformers").level)
ml.modeling.quiet_library_logs()
quiet = (len(warnings.filters), logging.getLogger("transformers").level)
print(before == after, quiet[1] == logging.ERROR and quiet[0] > after[0])
"""


def test_importing_ml_modeling_silences_nothing_until_asked():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]
