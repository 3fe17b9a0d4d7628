"""The live window: Tk from the standard library with Pillow's ImageTk, so it works beside opencv-python-headless.

The caller owns the loop: ``show`` puts an RGB frame on screen and ``poll`` lets Tk handle the
pending mouse and key events, which edit the prompts directly (clicks, drags, ``c``) or come back
as commands (``everything``, ``snapshot``, ``quit``).
"""

import os
import sys
import time
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np
from PIL import Image

from .errors import TinySamError

if TYPE_CHECKING:
    from tkinter import Event

HELP = "left click: +point   right click: -point   drag: box   c: clear   e: everything   s: snapshot   q/Esc: quit"
KEYS = {"e": "everything", "E": "everything", "s": "snapshot", "S": "snapshot", "q": "quit", "Q": "quit", "Escape": "quit"}
DRAG_PIXELS = 4  # a left press and release further apart than this (both axes) is a box, else a point
MARGIN = (40, 120)  # screen pixels kept free around a frame shrunk to fit (width, height: title bar and status line)


class Prompts(Protocol):
    """What the window edits: ``tinysam_edge.overlay.PersistentPrompts``."""

    def add_point(self, x: float, y: float, label: int) -> None: ...
    def set_box(self, x0: float, y0: float, x1: float, y1: float) -> None: ...
    def clear(self) -> None: ...


def require_tk() -> tuple[ModuleType, ModuleType]:
    """``tkinter`` and ``PIL.ImageTk`` once a display is there; otherwise one line saying what is missing."""
    if sys.platform not in ("win32", "darwin") and not os.environ.get("DISPLAY"):  # X11; Windows and macOS Tk need none
        raise TinySamError("the window needs an X display and DISPLAY is not set; run it in a desktop session, or use --headless")
    try:
        import tkinter

        from PIL import ImageTk
    except ImportError as exc:
        raise TinySamError(
            f"the window needs Tk, which this Python lacks ({exc}); on Debian/Ubuntu: apt install python3-tk, or use --headless"
        ) from None
    return tkinter, ImageTk


class LiveWindow:
    """A Tk window that shows RGB frames and turns mouse and keys into prompt edits and commands."""

    def __init__(self, prompts: Prompts, title: str = "tinysam-edge") -> None:
        tk, self._imagetk = require_tk()
        try:
            self.root = tk.Tk(className="tinysam-edge")
        except tk.TclError as exc:
            raise TinySamError(f"cannot open a window on DISPLAY={os.environ.get('DISPLAY')}: {exc}; or use --headless") from None
        self._tk_error = tk.TclError
        self.prompts, self.title = prompts, title
        self.root.title(title)
        self.root.protocol("WM_DELETE_WINDOW", lambda: self.commands.append("quit"))
        self.canvas = tk.Canvas(
            self.root, width=640, height=360, highlightthickness=0, borderwidth=0, background="black", cursor="crosshair"
        )
        self.canvas.pack()
        self.status = tk.Label(self.root, text="loading the model ...", anchor="w", justify="left", font="TkFixedFont")
        self.status.pack(fill="x")
        self._image_item = self.canvas.create_image(0, 0, anchor="nw")
        self._rubber = self.canvas.create_rectangle(0, 0, 0, 0, outline="#28c83c", width=2, dash=(4, 2), state="hidden")
        self._photo = None
        self.scale = 1.0
        self.shown: np.ndarray | None = None  #: the RGB image on screen at full frame size (what a snapshot saves)
        self.commands: list[str] = []
        self.touched = False  #: set by every key or click (``wait_any``)
        self._drag: tuple[int, int] | None = None
        self._frozen = False  # in wait_any: clicks and keys only end the wait
        self.canvas.bind("<ButtonPress-1>", self._press)
        self.canvas.bind("<B1-Motion>", self._motion)
        self.canvas.bind("<ButtonRelease-1>", self._release)
        self.canvas.bind("<ButtonPress-3>", lambda e: self._click(e, 0))
        self.root.bind("<KeyPress>", self._key)
        self.root.update()

    def show(self, rgb: np.ndarray, status: str, title: str | None = None) -> None:
        """Put an HxWx3 uint8 RGB image on screen (shrunk to fit the screen if needed) with a status line."""
        self.shown = rgb
        h, w = rgb.shape[:2]
        if self._photo is None or (self._photo.width(), self._photo.height()) != self._display_size(w, h):
            self.scale = min(1.0, (self.root.winfo_screenwidth() - MARGIN[0]) / w, (self.root.winfo_screenheight() - MARGIN[1]) / h)
            size = self._display_size(w, h)
            self._photo = self._imagetk.PhotoImage("RGB", size)
            self.canvas.configure(width=size[0], height=size[1])
            self.canvas.itemconfigure(self._image_item, image=self._photo)
        if self.scale < 1.0:
            rgb = cv2.resize(rgb, (self._photo.width(), self._photo.height()), interpolation=cv2.INTER_AREA)
        self._photo.paste(Image.fromarray(rgb))
        self.status.configure(text=f"{status}\n{HELP}")
        self.root.title(f"{self.title}: {title}" if title else self.title)

    def _display_size(self, w: int, h: int) -> tuple[int, int]:
        return max(1, round(w * self.scale)), max(1, round(h * self.scale))

    def poll(self) -> list[str]:
        """Handle pending window events; the commands they gave (``everything``, ``snapshot``, ``quit``), oldest first."""
        try:
            self.root.update()
        except self._tk_error:  # the window was destroyed under us
            self.commands.append("quit")
        commands, self.commands = self.commands, []
        return commands

    def wait(self, seconds: float = 0.02) -> list[str]:
        """``poll`` after a short sleep: for loops that wait on the user rather than on frames."""
        time.sleep(seconds)
        return self.poll()

    def wait_any(self) -> list[str]:
        """Block until the next key or click, which edits no prompt; the commands of that key (e.g. ``snapshot``)."""
        self.touched, self._frozen, commands = False, True, []
        try:
            while not self.touched:
                commands += self.wait()
        finally:
            self._frozen = False
        return commands

    def _image_xy(self, x: int, y: int) -> tuple[int, int]:
        """Window pixel -> frame pixel (clamped into the frame)."""
        h, w = self.shown.shape[:2] if self.shown is not None else (1, 1)
        return min(w - 1, max(0, round(x / self.scale))), min(h - 1, max(0, round(y / self.scale)))

    def _press(self, event: "Event") -> None:
        self.touched = True
        if self._frozen:  # this click only ends wait_any; its release must not add a point
            return
        self._drag = (event.x, event.y)
        self.canvas.coords(self._rubber, event.x, event.y, event.x, event.y)

    def _motion(self, event: "Event") -> None:
        if self._drag is not None:
            self.canvas.coords(self._rubber, *self._drag, event.x, event.y)
            self.canvas.itemconfigure(self._rubber, state="normal")

    def _release(self, event: "Event") -> None:
        start, self._drag = self._drag, None
        self.canvas.itemconfigure(self._rubber, state="hidden")
        if start is None:
            return
        if abs(event.x - start[0]) > DRAG_PIXELS and abs(event.y - start[1]) > DRAG_PIXELS:
            x0, y0 = self._image_xy(*start)
            x1, y1 = self._image_xy(event.x, event.y)
            self.prompts.set_box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        else:
            self.prompts.add_point(*self._image_xy(event.x, event.y), 1)

    def _click(self, event: "Event", label: int) -> None:
        self.touched = True
        if not self._frozen:
            self.prompts.add_point(*self._image_xy(event.x, event.y), label)

    def _key(self, event: "Event") -> None:
        self.touched = True
        command = KEYS.get(event.keysym)
        if command is not None:
            self.commands.append(command)
        elif event.keysym in ("c", "C") and not self._frozen:
            self.prompts.clear()

    def close(self) -> None:
        """Destroy the window (safe to call twice)."""
        try:
            self.root.destroy()
        except self._tk_error:
            pass
