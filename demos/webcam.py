"""Live segmentation: ``tinysam-edge webcam`` as a script (the options are the same).

python demos/webcam.py --source 0 --model-dir DIR                    # Tk window: needs a display and tkinter
python demos/webcam.py --source clip.mp4 --model-dir DIR --headless --point 480,270 --max-frames 100 --record out.mp4
"""

import sys

from tinysam_edge.cli import main

if __name__ == "__main__":
    sys.exit(main(["webcam", *sys.argv[1:]]))
