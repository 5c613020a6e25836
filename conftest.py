"""Keeps the repository root importable (configs/, experiments/) for every test."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
