"""Background runs: one task in a separate process, exchanging files in a work folder.

The Slicer module keeps its GUI responsive by running heavy work as
``PythonSlicer -m MRISynthLib --progress-lines <command> ...`` in a ``QProcess``. This
module is the Qt-free part of that: it writes the inputs into a fresh work folder
(:func:`write_inputs`: NRRD volumes with their TE/TR in the header, ``.seq.nrrd``
sequences, HDF5 k-space), builds the command line (:func:`command`), parses the progress
lines the process prints (:class:`ProgressParser`), reads the results back
(:func:`read_outputs`) and removes the folder (:func:`cleanup`). The command writes its
outputs atomically, so a killed run leaves no partial result; the caller adds nothing to
the scene until :func:`read_outputs` has succeeded.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from .data.io import Volume, acquisition_metadata, read_sequence, read_volume, write_sequence, write_volume

PROGRESS_PREFIX = "MRISYNTH_PROGRESS "
TASKS = ("reparam", "synth", "translate", "recon", "cine")
INPUT = {"reparam": "input.nrrd", "synth": "input.nrrd", "translate": "input.nrrd", "recon": "kspace.h5",
         "cine": "input.seq.nrrd"}
SECOND_INPUT = "input2.nrrd"  # synth: an optional second scan of the same voxel grid
OUTPUT = {"reparam": "output.nrrd", "synth": "output.nrrd", "translate": "output.nrrd", "recon": "output.nrrd",
          "cine": "output.seq.nrrd"}
MAP_NAMES = ("pd", "t1", "t2", "t2star")


def progress_printer(stream=None) -> Callable[[float], None]:
    """A progress callback printing ``MRISYNTH_PROGRESS <fraction>`` lines (flushed)."""
    def report(fraction: float) -> None:
        out = stream or sys.stdout
        out.write(f"{PROGRESS_PREFIX}{float(fraction):.4f}\n")
        out.flush()
    return report


class ProgressParser:
    """Feed it the process's stdout as it arrives (any chunking); it returns the new progress
    fractions and keeps the other lines (the command's messages) in ``messages``."""

    def __init__(self):
        self._partial = ""
        self.messages: List[str] = []
        self.fraction = 0.0

    def feed(self, text: str) -> List[float]:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        got = []
        for line in lines:
            line = line.rstrip("\r")
            if line.startswith(PROGRESS_PREFIX):
                try:
                    got.append(float(line[len(PROGRESS_PREFIX):]))
                except ValueError:
                    self.messages.append(line)
            elif line:
                self.messages.append(line)
        if got:
            self.fraction = got[-1]
        return got


@dataclass
class JobResult:
    volume: Optional[Volume] = None                     # reparam, synth, translate, recon
    maps: Dict[str, Volume] = field(default_factory=dict)  # synth with save_maps
    frames: Optional[np.ndarray] = None                 # cine: [T, z, y, x]
    geometry: Optional[Volume] = None                   # cine: frame 0's geometry
    times: Optional[np.ndarray] = None                  # cine: frame index values


def new_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="MRISynth-job-"))


def cleanup(workdir) -> None:
    """Remove the work folder and everything in it (inputs, outputs, temporary files)."""
    shutil.rmtree(workdir, ignore_errors=True)


def write_inputs(task: str, workdir, volume: Optional[Volume] = None, acquisition: Optional[dict] = None,
                 kspace_file=None, simulate: Optional[dict] = None, frames: Optional[np.ndarray] = None,
                 geometry: Optional[Volume] = None, times=None, second_volume: Optional[Volume] = None,
                 second_acquisition: Optional[dict] = None) -> Path:
    """Write the task's input file into ``workdir`` and return its path.

    reparam/synth/translate: ``volume`` (with ``acquisition`` TE/TR written to the header);
    synth also ``second_volume`` (with ``second_acquisition``), written as ``SECOND_INPUT``.
    recon: ``kspace_file`` (copied: the user's file is never opened for writing) or
    ``volume`` plus ``simulate`` (mask_kind, accel, n_coils, snr: k-space simulated as the
    ``undersample`` command does). cine: ``frames`` [T, (z,) y, x] with ``geometry``/``times``.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; one of {TASKS}")
    path = Path(workdir) / INPUT[task]
    if task == "recon":
        if (kspace_file is None) == (volume is None):
            raise ValueError("give either a k-space file or a volume to simulate k-space from")
        if kspace_file is not None:
            shutil.copyfile(kspace_file, path)
        else:
            from .tasks.recon import write_undersampled

            write_undersampled(volume, path, **(simulate or {}))
    elif task == "cine":
        if frames is None:
            raise ValueError("the cine task needs frames")
        write_sequence(frames, geometry or Volume(np.zeros((1, 1, 1), np.float32)), path, index_values=times,
                       index_name="time", index_unit="s")
    else:
        if volume is None:
            raise ValueError(f"the {task} task needs a volume")
        if second_volume is not None and task != "synth":
            raise ValueError("only the synth task takes a second input")
        for vol, acq, name in ((volume, acquisition, INPUT[task]), (second_volume, second_acquisition, SECOND_INPUT)):
            if vol is not None:
                write_volume(Volume(vol.array, vol.spacing, vol.origin, vol.direction, acquisition_metadata(acq or {})),
                             Path(workdir) / name)
    return path


def _fmt(x) -> str:
    return repr(float(x))


def command(task: str, workdir, settings: dict, python: Optional[str] = None) -> List[str]:
    """The argument list that runs ``task`` on the inputs in ``workdir``.

    ``settings``: reparam: target_te, target_tr, model; synth: sequence, te, tr, ti, flip,
    save_maps, second_input (True: ``SECOND_INPUT`` was written too), assist (one input:
    Param-Net assistance), null (ir: "csf" or "fat", TI set to null it as estimated); translate: direction; recon: method; cine: method, accel; all: device.
    Input TE/TR come from the input file's header.
    """
    w = Path(workdir)
    args = [python or sys.executable, "-m", "MRISynthLib", "--progress-lines", task,
            "--input", str(w / INPUT[task]), "--output", str(w / OUTPUT[task]),
            "--device", str(settings.get("device", "auto"))]
    if task == "reparam":
        args += ["--te", _fmt(settings["target_te"]), "--tr", _fmt(settings["target_tr"]),
                 "--model", str(settings.get("model", "d2p"))]
    elif task == "synth":
        seq = settings["sequence"]
        args += ["--sequence", seq, "--te", _fmt(settings["te"]), "--tr", _fmt(settings["tr"])]
        if seq == "ir":
            args += ["--ti", _fmt(settings["ti"])]
            if settings.get("null"):
                args += ["--null", str(settings["null"])]
        if seq == "gre":
            args += ["--flip", _fmt(settings["flip"])]
        if settings.get("save_maps"):
            args.append("--save-maps")
        if settings.get("second_input"):
            args += ["--input", str(w / SECOND_INPUT)]
        elif settings.get("assist"):
            args.append("--assist")
    elif task == "translate":
        args += ["--direction", settings.get("direction", "t1_to_t2")]
    elif task == "recon":
        args += ["--method", settings.get("method", "cs")]
    elif task == "cine":
        args += ["--method", settings.get("method", "cascade"), "--accel", _fmt(settings.get("accel", 5.0))]
    else:
        raise ValueError(f"unknown task {task!r}; one of {TASKS}")
    return args


def read_outputs(task: str, workdir, save_maps: bool = False) -> JobResult:
    """The finished run's results (FileNotFoundError when the run wrote none)."""
    w = Path(workdir)
    out = w / OUTPUT[task]
    if not out.exists():
        raise FileNotFoundError(f"the {task} run wrote no output")
    if task == "cine":
        frames, geom, times = read_sequence(out)
        return JobResult(frames=frames, geometry=geom, times=times)
    res = JobResult(volume=read_volume(out))
    if task == "synth" and save_maps:
        res.maps = {k: read_volume(w / f"output_{k}.nrrd") for k in MAP_NAMES}
    return res
