"""Puts this folder on sys.path so its tests share `coordhelpers`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
