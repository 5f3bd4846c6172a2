"""``python3 -m blocklayer.tools.io``"""
from .main import main

main()
