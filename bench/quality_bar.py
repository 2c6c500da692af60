"""Moved to scripts/quality_bar.py. This path keeps working for train/campaign.py, which runs
``bench/quality_bar.py``; remove it once campaign.py names scripts/quality_bar.py."""

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    script = Path(__file__).resolve().parents[1] / "scripts" / "quality_bar.py"
    sys.argv[0] = str(script)
    runpy.run_path(str(script), run_name="__main__")
