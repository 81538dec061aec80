import sys
from pathlib import Path

# test doubles shared by this folder's tests (build_fakes.py); the tests tree has no packages
sys.path.insert(0, str(Path(__file__).parent))
