"""Command line: ``python -m MRISynthLib <command> ...`` (also installed as ``mrisynth``).

Times are given in seconds (``--te 0.09``), flip angles in degrees.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

from . import __version__


class CLIError(Exception):
    """A user error: printed without a traceback, exit status 2."""


def _add_sequence_args(p: argparse.ArgumentParser):
    from .physics.signal import PRESETS, SEQUENCES

    g = p.add_argument_group("acquisition (times in seconds, flip in degrees)")
    g.add_argument("--preset", choices=sorted(PRESETS), help="a typical protocol instead of --sequence/--te/...")
    g.add_argument("--sequence", choices=SEQUENCES, default="se", help="se: spin echo, ir: inversion recovery, "
                   "gre: spoiled gradient echo (default se)")
    g.add_argument("--te", type=float, help="echo time, s")
    g.add_argument("--tr", type=float, help="repetition time, s")
    g.add_argument("--ti", type=float, help="inversion time, s (ir)")
    g.add_argument("--flip", type=float, help="flip angle, degrees (gre)")
    g.add_argument("--simple", action="store_true",
                   help="simple spin-echo form without the refocusing term (default: exact 90-180 form)")


def _sequence_from_args(a):
    from .physics.signal import PRESETS, SequenceParams

    if a.preset:
        return PRESETS[a.preset]
    if a.te is None or a.tr is None:
        raise CLIError("give --preset, or --te and --tr (seconds)")
    return SequenceParams(a.sequence, a.te, a.tr, ti=a.ti, flip=a.flip, exact=not a.simple)


def _phantom_from_args(a):
    from .physics.phantoms import brainweb_phantom, mni152_phantom
    from .physics.tissues import get_table

    if a.phantom == "brainweb":
        ph = brainweb_phantom(voxel_mm=a.voxel_mm, table=a.table)
    else:
        ph = mni152_phantom(voxel_mm=a.voxel_mm)
        ph.table = get_table(a.table)
    return ph


def cmd_simulate(a) -> int:
    from .data.io import Volume, read_volume, sequence_metadata, write_volume
    from .physics.phantoms import add_noise, bias_field, render_maps
    from .physics.tissues import jitter_table

    seq = _sequence_from_args(a)
    rng = np.random.default_rng(a.seed)
    protect = []
    if a.pd or a.t1 or a.t2:
        if not (a.pd and a.t1 and a.t2):
            raise CLIError("--pd, --t1 and --t2 go together (volumes in seconds; PD relative)")
        vols = {k: read_volume(getattr(a, k)) for k in ("pd", "t1", "t2")}
        shapes = {v.array.shape for v in vols.values()}
        if len(shapes) != 1:
            raise CLIError(f"PD/T1/T2 volumes differ in shape: {sorted(shapes)}")
        maps = {k: v.array.astype(np.float32) for k, v in vols.items()}
        if a.t2star:
            maps["t2star"] = read_volume(a.t2star).array.astype(np.float32)
        img = render_maps(maps, seq)
        ref = vols["pd"]
        protect = [a.pd, a.t1, a.t2] + ([a.t2star] if a.t2star else [])
    else:
        ph = _phantom_from_args(a)
        table = jitter_table(ph.table, rng) if a.jitter else ph.table
        img = ph.render(seq, table)
        ref = Volume(img, **ph.geometry())
    if a.bias:
        img = img * bias_field(img.shape, rng, a.bias)
    if a.snr:
        img = add_noise(img, a.snr, rng)
    out = ref.with_array(img.astype(np.float32))
    out.metadata = sequence_metadata(seq)
    write_volume(out, a.output, protect=protect)
    print(f"wrote {a.output}: {seq.describe()}, shape {img.shape}, spacing {tuple(round(s, 3) for s in out.spacing)}")
    return 0


def cmd_make_dataset(a) -> int:
    from .data.simulate import ProtocolConfig, make_paper_dataset, read_paper_dataset_info

    cfg = ProtocolConfig(n_pairs=a.pairs, n_slices=a.slices, size=a.size, voxel_mm=a.voxel_mm, table=a.table,
                         jitter=a.jitter, snr=a.snr, bias=a.bias, seed=a.seed, phantom=a.phantom,
                         exact=not a.simple)
    t0 = time.time()
    make_paper_dataset(a.output, cfg, progress=not a.quiet)
    info = read_paper_dataset_info(a.output)
    print(f"wrote {a.output} in {time.time() - t0:.1f} s: targets {info['targets']}, defaults {info['defaults']}, "
          f"{info['n_test_pairs']} test pairs, {info['n_test_slices']} test slices")
    return 0


def cmd_demo(a) -> int:
    """Simulate T1w/T2w/PDw/FLAIR/STIR volumes from BrainWeb, write NRRDs and a montage; then
    run the shipped networks on them (Default-to-Param, synthesis, CycleGAN), each result
    scored against the physics and shown in a second montage."""
    from tqdm.auto import tqdm

    from .data.io import Volume, sequence_metadata, write_volume
    from .physics.phantoms import add_noise, brainweb_phantom
    from .physics.signal import PRESETS, SequenceParams, ti_null
    from .viz import montage, orthogonal_views

    out = Path(a.output)
    ph = brainweb_phantom(voxel_mm=a.voxel_mm, table=a.table)
    csf, fat = ph.table.tissues[1], ph.table.tissues.get(4)
    flair = PRESETS["FLAIR"]
    stir = PRESETS["STIR"]
    # null CSF (FLAIR) and fat (STIR) for the chosen tissue table
    flair = SequenceParams("ir", flair.te, flair.tr, ti=float(ti_null(csf.t1, flair.tr, flair.te)), name="FLAIR")
    if fat is not None:
        stir = SequenceParams("ir", stir.te, stir.tr, ti=float(ti_null(fat.t1, stir.tr, stir.te)), name="STIR")
    seqs = [PRESETS["T1w"], PRESETS["T2w"], PRESETS["PDw"], flair, stir]
    rng = np.random.default_rng(a.seed)
    rows, names, vols, clean = [], [], {}, {}

    def simulate(seq):
        """Render ``seq`` (noise-free into ``clean``), add the noise, write the volume."""
        clean[seq.name] = img = ph.render(seq)
        if a.snr:
            img = add_noise(img, a.snr, rng)
        vols[seq.name] = Volume(img.astype(np.float32), **ph.geometry(), metadata=sequence_metadata(seq))
        write_volume(vols[seq.name], out / f"{seq.name}.nrrd")
        return img

    for seq in tqdm(seqs, desc="simulating contrasts", disable=a.quiet):
        img = simulate(seq)
        rows.append(orthogonal_views(img))
        names.append(f"{seq.name}\n{seq.describe().split(' ', 1)[1]}")
    maps = ph.maps()
    rows.append([maps["pd"][maps["pd"].shape[0] // 2], maps["t1"][maps["t1"].shape[0] // 2],
                 maps["t2"][maps["t2"].shape[0] // 2]])
    names.append("tissue maps")
    r = len(rows) - 1
    png = montage(rows, out / "montage.png", row_titles=names, col_titles=["axial", "coronal", "sagittal"],
                  panel_titles={(r, 0): "PD (axial)", (r, 1): "T1, s", (r, 2): "T2, s"},
                  title=f"BrainWeb, {ph.table.name} tissue table, {ph.spacing[0]:g} mm")
    print(f"wrote {len(seqs)} volumes ({', '.join(s.name for s in seqs)}) and {png}")
    if not a.no_networks:
        _demo_networks(a, ph, vols, clean, flair, simulate, out)
    return 0


def _demo_networks(a, ph, vols, clean, flair, simulate, out):
    """The shipped networks on the demo's volumes, each result scored against the physics
    reference (noise-free) and shown in ``networks.png``: Default-to-Param from a spin echo
    at TE 50 ms / TR 4.5 s to the T2w preset, physics-informed synthesis of FLAIR from the
    T1w and T2w volumes (TI set to null the CSF as estimated, as a technologist would), and
    the CycleGAN's T1w -> T2w translation. ``simulate(seq)`` adds a simulated volume to
    ``vols`` and ``clean`` (noisy and noise-free) and writes it."""
    from .metrics import psnr
    from .physics.signal import PRESETS, SequenceParams
    from .tasks.reparam import DEFAULT_TE, DEFAULT_TR, reparameterize
    from .tasks.synth import estimate_maps, nulled
    from .tasks.translate import translate
    from .viz import montage

    show = not a.quiet
    default = SequenceParams("se", DEFAULT_TE, DEFAULT_TR, name=f"SE_TE{DEFAULT_TE * 1e3:g}_TR{DEFAULT_TR * 1e3:g}")
    simulate(default)
    t2 = PRESETS["T2w"]
    est = estimate_maps([vols["T1w"], vols["T2w"]], [PRESETS["T1w"], t2], progress=show)
    flair_null = nulled(flair, est, "csf")
    fl = vols["T1w"].with_array(est.render(flair_null))
    cyc = translate(vols["T1w"], "t1_to_t2", progress=show)
    cyc_seq = SequenceParams("se", cyc.acquisition["te"], cyc.acquisition["tr"]) if cyc.acquisition else None
    results = [  # (output name, input name, result, its acquisition, reference name, label)
        ("T2w_reparam", default.name, reparameterize(vols[default.name], DEFAULT_TE, DEFAULT_TR, t2.te, t2.tr,
                                                     model="d2p", progress=show), t2, "T2w", "Default-to-Param"),
        ("FLAIR_synth", "T1w", fl, flair_null, flair.name,
         "synthesis from T1w + T2w (TI nulls its CSF)"),
        ("T2w_translate", "T1w", cyc, cyc_seq, "T2w", "CycleGAN"),
    ]
    head = ph.maps()["pd"] > 0
    label = ph.fractions.argmax(0)
    rows, names, titles = [], [], {}

    def csf_gm(x):
        return float(x[label == 1].mean() / max(float(x[label == 2].mean()), 1e-12))

    def u8(x):   # each image on its own 0-255 scale (99.5th percentile of the head -> 255)
        return np.clip(x / max(float(np.percentile(x[head], 99.5)), 1e-12) * 255.0, 0, 255)

    for i, (name, src, res, seq, ref, what) in enumerate(results):
        _write_like_input(vols[src], res.array, out / f"{name}.nrrd", out / f"{src}.nrrd", seq)
        p, r = u8(res.array), u8(clean[ref])
        score, copy = psnr(p[head], r[head]), psnr(u8(vols[src].array)[head], r[head])
        print(f"{what}: {name}.nrrd, PSNR {score:.2f} dB against the noise-free {ref} (its input {src}: "
              f"{copy:.2f} dB; head voxels, each volume on its own 0-255 scale); CSF / grey matter level "
              f"{csf_gm(res.array):.2f} (reference {csf_gm(clean[ref]):.2f})")
        z = p.shape[0] // 2
        rows.append([vols[src].array[z], p[z], r[z], np.abs(p[z] - r[z])])
        names.append(f"{what}\n{name}")
        titles[(i, 1)] = f"result, {score:.1f} dB (input {copy:.1f})"
        titles[(i, 0)] = f"input: {src}"
        titles[(i, 2)] = f"reference: {ref}"
        titles[(i, 3)] = "|difference|, window 0-100"
    png = montage(rows, out / "networks.png", row_titles=names, cmaps=["gray", "gray", "gray", "magma"],
                  panel_titles=titles, panel_limits={(i, c): (0, 255 if c in (1, 2) else 100)
                                                     for i in range(len(rows)) for c in (1, 2, 3)},
                  title="the shipped networks on the BrainWeb demo volumes (axial; result and reference each "
                        "on its own 0-255 scale)")
    print(f"FLAIR synthesis: TI {flair_null.ti:.3f} s nulls the CSF as estimated (T1 {est.t1[0]:.2f} s); at the "
          f"reference's TI {flair.ti:.3f} s (the table's CSF T1) its CSF / grey matter level would be "
          f"{csf_gm(est.render(flair)):.2f}")
    print(f"wrote {', '.join(r[0] + '.nrrd' for r in results)}, {default.name}.nrrd and {png}")


def _input_times(a, vol):
    te = a.input_te if a.input_te is not None else vol.acquisition.get("te")
    tr = a.input_tr if a.input_tr is not None else vol.acquisition.get("tr")
    if te is None or tr is None:
        raise CLIError("give --input-te and --input-tr (seconds); the input file's header does not have them")
    if a.input_te is None and ({"ti", "flip"} & set(vol.acquisition)):
        print("warning: the input's header has an inversion time or flip angle; the model treats it as a spin "
              "echo at the header's TE/TR", file=sys.stderr)
    return te, tr


def _write_like_input(vol, arr, out_path, in_path, seq=None):
    """Write with the input's geometry; the header describes ``seq`` (the synthesized
    acquisition), never the input's."""
    from .data.io import ACQUISITION_KEYS, IMAGE_2D_SUFFIXES, sequence_metadata, write_volume

    if str(out_path).lower().endswith(IMAGE_2D_SUFFIXES):
        arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)  # the input's 8-bit display range
    out = vol.with_array(arr)
    drop = set(ACQUISITION_KEYS.values()) | {"MRISynth_sequence"}
    out.metadata = {k: v for k, v in out.metadata.items() if k not in drop}
    if seq is not None:
        out.metadata.update(sequence_metadata(seq))
    write_volume(out, out_path, protect=[in_path])


def cmd_reparam(a) -> int:
    """Synthesize the spin-echo image at another TE/TR with the Param-Net models."""
    import warnings

    from .data.io import read_volume
    from .physics.signal import SequenceParams
    from .tasks.reparam import reparameterize

    vol = read_volume(a.input)
    te, tr = _input_times(a, vol)
    t0 = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = reparameterize(vol.array, te, tr, a.te, a.tr, model=a.model, device=a.device,
                             batch_size=a.batch_size, progress=not a.quiet, progress_callback=a.progress_callback,
                             flip_average=not a.no_flip_average)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    _write_like_input(vol, out, a.output, a.input, SequenceParams("se", a.te, a.tr))
    print(f"wrote {a.output}: TE {te * 1e3:g} ms / TR {tr * 1e3:g} ms -> TE {a.te * 1e3:g} ms / TR {a.tr * 1e3:g} ms "
          f"({a.model}, {out.shape}, {time.time() - t0:.1f} s)")
    return 0


def _nth(values, j):
    return values[j] if values and j < len(values) else None


def cmd_synth(a) -> int:
    """Render any contrast from 1-2 ordinary scans through estimated PD/T1/T2 (physics-informed)."""
    import warnings
    from pathlib import Path

    from .data.io import IMAGE_2D_SUFFIXES, file_suffix, read_volume, to_uint8, write_volume
    from .physics.signal import SequenceParams
    from .tasks.synth import assisted_maps, check_null, estimate_maps, maps_volumes, nulled

    if len(a.input) > 2:
        raise CLIError("give at most two --input images")
    target = _sequence_from_args(a)  # validated before any work
    try:
        check_null(target, a.null)
    except ValueError as e:
        raise CLIError(f"--null: {e}")
    vols, seqs = [], []
    for j, path in enumerate(a.input):
        vol = read_volume(path)
        acq = vol.acquisition
        te = _nth(a.input_te, j) if _nth(a.input_te, j) is not None else acq.get("te")
        tr = _nth(a.input_tr, j) if _nth(a.input_tr, j) is not None else acq.get("tr")
        if te is None or tr is None:
            raise CLIError(f"give --input-te and --input-tr (seconds) for input {j + 1} ({path}); "
                           "its header does not have them")
        kind = _nth(a.input_sequence, j) or ("ir" if acq.get("ti") else "gre" if acq.get("flip") else "se")
        ti = _nth(a.input_ti, j) if _nth(a.input_ti, j) is not None else acq.get("ti")
        flip = _nth(a.input_flip, j) if _nth(a.input_flip, j) is not None else acq.get("flip")
        seqs.append(SequenceParams(kind, te, tr, ti=ti, flip=flip))
        vols.append(vol)
    if any(v.array.shape != vols[0].array.shape for v in vols):
        raise CLIError("all inputs must have the same shape (co-registered)")
    if a.assist and (len(vols) > 1 or seqs[0].sequence != "se"):
        raise CLIError("--assist takes one spin-echo input (the Param-Nets model spin echoes)")
    t0 = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if a.assist:
            est = assisted_maps(vols[0], seqs[0], model=a.model, device=a.device, progress=not a.quiet,
                                progress_callback=a.progress_callback, flip_average=not a.no_flip_average)
        else:
            est = estimate_maps(vols, seqs, model=a.model, device=a.device, progress=not a.quiet,
                                progress_callback=a.progress_callback, flip_average=not a.no_flip_average)
    t1 = time.time()
    try:
        target = nulled(target, est, a.null)
    except ValueError as e:
        raise CLIError(str(e))
    out = est.render(target)
    t2 = time.time()
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    out_suffix = file_suffix(Path(a.output))
    if out_suffix in IMAGE_2D_SUFFIXES:
        out = to_uint8(out, lo=0.0)  # display-normalised 8-bit
    _write_like_input(vols[0], out, a.output, a.input[0], target)
    msg = (f"wrote {a.output}: {target.describe()}{f' (TI nulls the estimated {a.null})' if a.null else ''} from "
           f"{len(vols)} input(s){' (Param-Net assisted)' if a.assist else ''} ({out.shape}; maps "
           f"{t1 - t0:.2f} s, render {(t2 - t1) * 1e3:.0f} ms)")
    if a.save_maps:
        out_p = Path(a.output)
        stem = out_p.name[: len(out_p.name) - len(out_suffix)]
        ext = ".nrrd" if vols[0].array.ndim == 3 or out_suffix in IMAGE_2D_SUFFIXES else out_suffix
        written = []
        for name, v in maps_volumes(est, vols[0]).items():
            path = out_p.with_name(f"{stem}_{name}{ext}")
            write_volume(v, path, protect=list(a.input))
            written.append(path.name)
        msg += "; maps (PD relative to water, times in s): " + ", ".join(written)
    print(msg)
    return 0


def cmd_translate(a) -> int:
    """Translate a T1-weighted image to T2-weighted or back with the shipped CycleGAN."""
    from .data.io import read_volume
    from .physics.signal import SequenceParams
    from .tasks.translate import translate

    vol = read_volume(a.input)
    t0 = time.time()
    out = translate(vol, a.direction, model=a.model, device=a.device, batch_size=a.batch_size,
                    progress=not a.quiet, progress_callback=a.progress_callback)
    acq = out.acquisition                    # the TE/TR the model's output imitates (never the input's)
    _write_like_input(vol, out.array, a.output, a.input,
                      seq=SequenceParams("se", acq["te"], acq["tr"]) if acq else None)
    print(f"wrote {a.output}: {a.direction} ({out.array.shape}, {time.time() - t0:.1f} s)")
    return 0


def cmd_undersample(a) -> int:
    """Make a multi-coil k-space file (fastMRI layout) from an image volume."""
    from .data.io import read_volume
    from .tasks.recon import write_undersampled

    sim = write_undersampled(read_volume(a.input), a.output, a.mask, a.accel, a.coils, a.snr, center=a.center,
                             seed=a.seed, save_maps=a.save_maps, source=str(a.input))
    print(f"wrote {a.output}: kspace {sim['kspace'].shape}, {a.mask} mask, acceleration {sim['acceleration']:.3f}")
    return 0


def cmd_recon(a) -> int:
    """Reconstruct undersampled multi-coil k-space into a magnitude (and phase) volume."""
    from .data.io import Volume, write_volume
    from .data.hdf5 import read_kspace_file
    from .tasks.recon import reconstruct

    k, mask, maps, attrs = read_kspace_file(a.input)
    t0 = time.time()
    img = reconstruct(k, mask=mask, maps=None if a.estimate_maps else maps, method=a.method, lamda=a.lamda,
                      iters=a.iters, model=a.model, device=a.device, progress=not a.quiet, beta=a.beta,
                      flow_variant=a.flow_variant, progress_callback=a.progress_callback, precision=a.precision)
    geo = {}
    if "spacing" in attrs:
        geo = {"spacing": tuple(np.asarray(attrs["spacing"]).tolist()), "origin": tuple(np.asarray(attrs["origin"]).tolist()),
               "direction": tuple(np.asarray(attrs["direction"]).tolist())}
    write_volume(Volume(np.abs(img).astype(np.float32), **geo), a.output, protect=[a.input])
    if a.phase:
        write_volume(Volume(np.angle(img).astype(np.float32), **geo), a.phase, protect=[a.input])
    print(f"wrote {a.output}: {a.method}, {img.shape[0]} slices in {time.time() - t0:.1f} s")
    return 0


def _cine_source(a):
    """(frames [T, x, y] or [T, z, x, y], geometry Volume or None, frame times or None) from
    --input: a .seq.nrrd, a cine HDF5 file holding a 'reference' or 'reconstruction', or a
    built-in phantom."""
    from .data.io import is_sequence_path, read_sequence

    src = str(a.input)
    if src in ("pincat", "ring"):
        from .data.cine import CineSimConfig, simulate_cine_set

        cfg = CineSimConfig(n_siat=0, n_brainweb=0, n_mni=0, n_ring=1 if src == "ring" else 0,
                            pincat=src == "pincat", seed=a.seed)
        return np.abs(simulate_cine_set(cfg).images[0]).astype(np.float32), None, None
    if is_sequence_path(src):
        frames, geom, times = read_sequence(src)
        if frames.shape[1] == 1:
            frames = frames[:, 0]
        return frames.astype(np.float32), geom, times
    from .data.hdf5 import read_cine

    d = read_cine(src)
    ref = d["reference"] if d["reference"] is not None else d["reconstruction"]
    if ref is None:
        raise CLIError(f"{src} holds k-space only; undersample-cine needs fully sampled images")
    return ref, _geometry_from_attrs(d["attrs"]), None


def _geometry_from_attrs(attrs):
    from .data.io import Volume

    if "spacing" not in attrs:
        return None
    return Volume(np.zeros((1, 1, 1), np.float32), spacing=tuple(np.asarray(attrs["spacing"], float).tolist()),
                  origin=tuple(np.asarray(attrs["origin"], float).tolist()),
                  direction=tuple(np.asarray(attrs["direction"], float).tolist()))


def _geometry_attrs(geom):
    if geom is None:
        return {}
    return {"spacing": np.asarray(geom.spacing, float), "origin": np.asarray(geom.origin, float),
            "direction": np.asarray(geom.direction, float)}


def cmd_undersample_cine(a) -> int:
    """Make ky-t undersampled cine k-space (HDF5: kspace [frames, kx, ky], mask [frames, ky],
    reference) from a fully sampled series: a new variable-density draw per frame."""
    from .data.hdf5 import write_cine
    from .tasks.cine import undersample_cine

    frames, geom, _ = _cine_source(a)
    if frames.ndim == 4:
        raise CLIError(f"the series has {frames.shape[1]} slices; cine k-space files hold one slice")
    und = undersample_cine(frames, accel=a.accel, center=a.center, noise=a.noise, seed=a.seed)
    attrs = {"acquisition": "MRISynth simulated cine", "acceleration": und["acceleration"], "center_lines": a.center,
             "noise": a.noise, "source": str(a.input), **_geometry_attrs(geom)}
    write_cine(a.output, kspace=und["kspace"], mask=und["mask"], reference=und["reference"], attrs=attrs)
    print(f"wrote {a.output}: kspace {und['kspace'].shape}, acceleration {und['acceleration']:.3f} "
          f"({a.center} centre lines, a new draw per frame)")
    return 0


def cmd_cine(a) -> int:
    """Reconstruct a cine: ky-t undersampled k-space from HDF5, or a fully sampled series
    (.seq.nrrd) undersampled retrospectively at --accel; writes .seq.nrrd or HDF5."""
    from .data.hdf5 import read_cine, write_cine
    from .data.io import Volume, check_not_input, is_sequence_path, write_sequence
    from .tasks.cine import reconstruct_cine

    src = str(a.input)
    geom, mask, times = None, None, None
    if is_sequence_path(src) or src in ("pincat", "ring"):
        data, geom, times = _cine_source(a)
    else:
        d = read_cine(src)
        if d["kspace"] is None:
            raise CLIError(f"{src} has no 'kspace' to reconstruct")
        data, mask, geom = d["kspace"], d["mask"], _geometry_from_attrs(d["attrs"])
    t0 = time.time()
    rec = reconstruct_cine(data, mask=mask, method=a.method, model=a.model, device=a.device, accel=a.accel,
                           progress=not a.quiet, progress_callback=a.progress_callback)
    if is_sequence_path(a.output):
        geom = geom or Volume(np.zeros((1, 1, 1), np.float32))
        if times is None or len(times) != len(rec):
            times = np.arange(len(rec)) * a.frame_time
        write_sequence(rec, geom, a.output, protect=[src], index_values=times, index_name="time", index_unit="s")
    elif str(a.output).lower().endswith((".h5", ".hdf5")):
        check_not_input(a.output, src)
        write_cine(a.output, reconstruction=rec, attrs={"method": a.method, **_geometry_attrs(geom)})
    else:
        raise CLIError("write the cine as .seq.nrrd (Slicer sequence) or .h5")
    if a.gif:
        from .viz import cine_gif

        cine_gif(rec if rec.ndim == 3 else rec[:, 0], a.gif)
    print(f"wrote {a.output}: {a.method}, {rec.shape[0]} frames {rec.shape[-2:]} in {time.time() - t0:.1f} s")
    return 0


def cmd_fetch_data(a) -> int:
    from .data.download import DATA_FILES, fetch_data

    names = a.names or sorted(DATA_FILES)
    for n in names:
        p = fetch_data(n, target_dir=a.target)
        print(f"{n}: {p} (verified)")
    return 0


def cmd_models(a) -> int:
    from .catalog import list_models, weights_path

    cards = list_models()
    if not cards:
        print("no models in the catalog")
    for c in cards:
        try:
            where = str(weights_path(c, progress=False))
        except (OSError, ValueError) as e:
            where = f"not available ({e})"
        m = ", ".join(f"{k}={v}" for k, v in c.metrics.items() if not isinstance(v, dict))
        print(f"{c.id} v{c.version} [{c.task}] {c.description}\n  weights: {where}\n  metrics: {m or '-'}")
    return 0


def cmd_samples(a) -> int:
    """List the shipped sample data with their verified paths (input files for every command)."""
    from .data.download import ChecksumError
    from .sampledata import load_samples, sample_path

    for s in load_samples().values():
        try:
            where = str(sample_path(s.name))
        except (OSError, ChecksumError) as e:
            where = f"not usable ({e})"
        print(f"{s.name} [{s.kind}] {s.description}\n  {where}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .physics.tissues import TABLES

    p = argparse.ArgumentParser(prog="mrisynth", description="MRISynth: MRI contrast synthesis and reconstruction.")
    p.add_argument("--version", action="version", version=f"MRISynth {__version__}")
    p.add_argument("--progress-lines", action="store_true",
                   help="report progress as 'MRISYNTH_PROGRESS <fraction>' lines on stdout instead of a progress bar "
                        "(for programs that run MRISynth in the background, such as the Slicer module)")
    sub = p.add_subparsers(dest="command", metavar="command")
    sub.required = True

    def phantom_args(sp, default_voxel=None, default_table="mrilab_full"):
        sp.add_argument("--phantom", choices=["brainweb", "mni152"], default="brainweb", help="anatomy (default brainweb)")
        sp.add_argument("--voxel-mm", type=float, default=default_voxel,
                        help="resample with partial volume to this voxel size, mm (2 = the paper's MRiLab grid)")
        sp.add_argument("--table", choices=sorted(TABLES), default=default_table, help="tissue property table")

    s = sub.add_parser("demo", help="simulate T1w/T2w/PDw/FLAIR/STIR volumes from BrainWeb, run the shipped "
                                    "networks on them, PNG montages",
                       description=cmd_demo.__doc__)
    s.add_argument("--output", default="mrisynth_demo", help="output folder (default ./mrisynth_demo)")
    s.add_argument("--voxel-mm", type=float, default=None, help="voxel size, mm (default: BrainWeb's 1 mm)")
    s.add_argument("--table", choices=sorted(TABLES), default="mrilab_full")
    s.add_argument("--snr", type=float, default=None, help="add Rician noise at this SNR")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--no-networks", action="store_true",
                   help="only simulate: skip running the shipped networks (Default-to-Param, synthesis, CycleGAN) "
                        "on the volumes and networks.png")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("simulate", help="render a contrast volume from a phantom or from PD/T1/T2 maps",
                       description="Render one acquisition from the BrainWeb/MNI152 phantom or from PD/T1/T2 map "
                                   "volumes; writes NRRD/NIfTI/MHA with the geometry kept.")
    phantom_args(s)
    s.add_argument("--pd", help="PD map volume (instead of a phantom)")
    s.add_argument("--t1", help="T1 map volume, seconds")
    s.add_argument("--t2", help="T2 map volume, seconds")
    s.add_argument("--t2star", help="T2* map volume, seconds (gre; default T2)")
    _add_sequence_args(s)
    s.add_argument("--jitter", action="store_true", help="randomise tissue properties (per-tissue log-normal)")
    s.add_argument("--snr", type=float, help="add Rician noise at this SNR")
    s.add_argument("--bias", type=float, default=0.0, help="smooth bias field strength, e.g. 0.2")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--output", "-o", required=True, help="output volume (.nrrd, .nii.gz, .mha)")
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("make-dataset", help="the seed paper's training protocol as one HDF5 file",
                       description="N random spin-echo (TE, TR) pairs x K BrainWeb slices at 256x256, 8-bit, plus "
                                   "the default TE 50 ms / TR 4.5 s inputs and the held-out split.")
    s.add_argument("--output", "-o", required=True, help="HDF5 file to write")
    s.add_argument("--pairs", type=int, default=200, help="number of (TE, TR) pairs (default 200)")
    s.add_argument("--slices", type=int, default=24, help="axial slices per pair (default 24)")
    s.add_argument("--size", type=int, default=256, help="image size (default 256)")
    phantom_args(s, default_voxel=2.0, default_table="mrilab")
    s.add_argument("--jitter", action="store_true", help="randomise tissue properties per pair")
    s.add_argument("--snr", type=float, help="Rician noise SNR")
    s.add_argument("--bias", type=float, default=0.0, help="bias field strength")
    s.add_argument("--simple", action="store_true", help="simple spin-echo equation")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_make_dataset)

    s = sub.add_parser("reparam", help="synthesize the spin-echo image at another TE/TR (Param-Net)",
                       description="Re-parameterize a 2D image (PNG/JPG) or a volume (NRRD/NIfTI/MHA/DICOM) acquired "
                                   "at (--input-te, --input-tr) to the spin-echo contrast at (--te, --tr). d2p expects "
                                   "the input at TE 50 ms / TR 4.5 s; p2p takes any input TE/TR.")
    s.add_argument("--input", "-i", required=True, help="input image or volume (a DICOM folder works)")
    s.add_argument("--input-te", type=float, help="input echo time, s (default: from the DICOM header)")
    s.add_argument("--input-tr", type=float, help="input repetition time, s (default: from the DICOM header)")
    s.add_argument("--te", type=float, required=True, help="target echo time, s")
    s.add_argument("--tr", type=float, required=True, help="target repetition time, s")
    s.add_argument("--output", "-o", required=True, help="output file (same kinds as the input)")
    s.add_argument("--model", default="d2p", help="d2p, p2p, or a model id from the catalog (default d2p)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--no-flip-average", action="store_true",
                   help="one pass per slice instead of averaging it with its mirror image (half the time, ~0.5 dB "
                        "lower on the held-out test set)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_reparam)

    s = sub.add_parser("synth", help="render any contrast (SE/IR/GRE) from ordinary scans via estimated PD/T1/T2",
                       description="Physics-informed synthesis: a network estimates PD-weighted tissue compartments "
                                   "and their T1/T2/T2* from one or two co-registered inputs, then the signal "
                                   "equation renders the target. Repeat --input (and its --input-* options) for a "
                                   "second input.")
    s.add_argument("--input", "-i", action="append", required=True, help="input image or volume (repeat for a 2nd)")
    s.add_argument("--input-te", type=float, action="append", help="input echo time, s (default: header)")
    s.add_argument("--input-tr", type=float, action="append", help="input repetition time, s (default: header)")
    s.add_argument("--input-sequence", choices=["se", "ir", "gre"], action="append",
                   help="input sequence (default se, or ir when the header has TI)")
    s.add_argument("--input-ti", type=float, action="append", help="input inversion time, s (ir)")
    s.add_argument("--input-flip", type=float, action="append", help="input flip angle, degrees (gre)")
    _add_sequence_args(s)
    s.add_argument("--output", "-o", required=True, help="rendered image or volume")
    s.add_argument("--save-maps", action="store_true",
                   help="also write <output>_pd, _t1, _t2, _t2star volumes (PD relative to water, seconds)")
    s.add_argument("--model", default=None, help="model id from the catalog (default: the shipped one)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    s.add_argument("--no-flip-average", action="store_true",
                   help="estimate the maps in one pass per slice instead of averaging it with its mirror image "
                        "(half the time, ~0.2 dB lower on the held-out test set)")
    s.add_argument("--assist", action="store_true",
                   help="one spin-echo input: also fit the spin echoes the re-parameterization Param-Net predicts "
                        "from it (Default-to-Param for a TE 50 ms / TR 4.5 s input, else Param-to-Param): far "
                        "better renders from one scan, about 20 times slower")
    s.add_argument("--null", choices=["csf", "fat"], default=None,
                   help="inversion-recovery target: set TI to null this tissue as the estimate gives its T1 "
                        "(FLAIR: csf, STIR: fat), instead of --ti or the preset's TI")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("translate", help="translate T1-weighted <-> T2-weighted images (CycleGAN)",
                       description="Translate a 2D image (PNG/JPG) or a volume (NRRD/NIfTI/MHA/DICOM) slice by slice "
                                   "(axis 0 of the array, usually axial) with the shipped CycleGAN generators. The "
                                   "output keeps the input's geometry and intensity range.")
    s.add_argument("--input", "-i", required=True, help="input image or volume (a DICOM folder works)")
    s.add_argument("--direction", choices=["t1_to_t2", "t2_to_t1"], default="t1_to_t2")
    s.add_argument("--output", "-o", required=True, help="output file (same kinds as the input)")
    s.add_argument("--model", default=None, help="model id from the catalog (default: the shipped one)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_translate)

    s = sub.add_parser("undersample", help="simulate undersampled multi-coil k-space from an image volume",
                       description="Image volume -> fastMRI-layout HDF5: birdcage coil maps, noise at --snr, a "
                                   "sampling mask; the volume's geometry is stored for the reconstruction.")
    s.add_argument("--input", "-i", required=True, help="image volume (slices along the first array axis)")
    s.add_argument("--output", "-o", required=True, help="HDF5 file to write")
    s.add_argument("--mask", choices=["vd1d", "equispaced", "poisson2d"], default="vd1d")
    s.add_argument("--accel", type=float, default=4.0, help="acceleration (default 4)")
    s.add_argument("--center", type=int, help="fully sampled centre lines (1D) or calibration size (2D)")
    s.add_argument("--coils", type=int, default=8)
    s.add_argument("--snr", type=float, default=40.0, help="image-space SNR; 0 for noise-free")
    s.add_argument("--save-maps", action="store_true", help="store the true coil maps as 'maps'")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_undersample)

    s = sub.add_parser("recon", help="reconstruct undersampled multi-coil k-space (fastMRI or seed-004 HDF5)",
                       description=cmd_recon.__doc__)
    s.add_argument("--input", "-i", required=True, help="HDF5 k-space file")
    s.add_argument("--output", "-o", required=True, help="magnitude volume to write")
    s.add_argument("--phase", help="also write the phase (radians) here")
    s.add_argument("--method", choices=["zero-filled", "cg-sense", "cs", "unrolled", "flow"], default="cs")
    s.add_argument("--model", default=None, help="unrolled, flow: a model id from the catalog (default: the shipped "
                                                 "one)")
    s.add_argument("--device", default="auto", help="unrolled, flow: auto, cpu, cuda, cuda:N (default auto)")
    s.add_argument("--lamda", type=float, help="regularisation weight (default: CG-SENSE and CS the weights tuned "
                                               "at the nearest acceleration; flow: the L1 weight tuned for the model)")
    s.add_argument("--beta", type=float, help="flow: weight of -log p(G(z)) (default: tuned for the model)")
    s.add_argument("--flow-variant", choices=["l1+logprob", "l1", "logprob"],
                   help="flow: objective (default: the variant tuned as best for the model)")
    s.add_argument("--iters", type=int, help="iterations (default 30 CG-SENSE, 100 CS, flow: tuned for the model)")
    s.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="unrolled: arithmetic of the denoisers (auto: bf16 on CPUs with AMX, where it is ~2x faster "
                        "with the benchmark's PSNR within 0.01 dB of fp32; else fp32)")
    s.add_argument("--estimate-maps", action="store_true", help="estimate coil maps even if the file has them")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_recon)

    s = sub.add_parser("undersample-cine", help="simulate ky-t undersampled cine k-space from a fully sampled series",
                       description=cmd_undersample_cine.__doc__)
    s.add_argument("--input", "-i", required=True,
                   help="fully sampled series: .seq.nrrd, a cine HDF5 with 'reference', or the built-in 'pincat' "
                        "or 'ring' phantom")
    s.add_argument("--output", "-o", required=True, help="HDF5 file to write")
    s.add_argument("--accel", type=float, default=5.0, help="acceleration per frame (default 5)")
    s.add_argument("--center", type=int, default=11, help="fully sampled centre lines per frame (default 11)")
    s.add_argument("--noise", type=float, default=0.0, help="k-space noise standard deviation (image max ~ 1)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_undersample_cine)

    s = sub.add_parser("cine", help="reconstruct undersampled 2D+time cine (cascade, seed network, zero-filled)",
                       description=cmd_cine.__doc__)
    s.add_argument("--input", "-i", required=True,
                   help="cine HDF5 (kspace [frames, (coils,) kx, ky], mask [frames, ky]), a fully sampled .seq.nrrd, "
                        "or the built-in 'pincat' / 'ring' phantom")
    s.add_argument("--output", "-o", required=True, help=".seq.nrrd (Slicer sequence) or .h5 ('reconstruction')")
    s.add_argument("--method", choices=["cascade", "seed", "zero-filled"], default="cascade")
    s.add_argument("--accel", type=float, default=5.0, help="retrospective acceleration for image input (default 5)")
    s.add_argument("--frame-time", type=float, default=0.05, help="seconds between output frames when the input has no frame times (default 0.05)")
    s.add_argument("--gif", help="also write an animated GIF of the reconstruction")
    s.add_argument("--model", default=None, help="model id from the catalog (default: the shipped one)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    s.add_argument("--seed", type=int, default=0, help="seed of the built-in phantoms")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_cine)

    s = sub.add_parser("models", help="list the model catalog")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("samples", help="list the shipped sample volumes and k-space file", description=cmd_samples.__doc__)
    s.set_defaults(func=cmd_samples)

    s = sub.add_parser("fetch-data", help="download public data files (BrainWeb) into the data folder")
    s.add_argument("names", nargs="*", help="which files (default: all)")
    s.add_argument("--target", type=Path, help="data folder (default: the MRISYNTH_DATA setting)")
    s.set_defaults(func=cmd_fetch_data)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    a.progress_callback = None
    if a.progress_lines:
        from .jobs import progress_printer

        a.progress_callback = progress_printer()
        a.quiet = True
    try:
        return a.func(a)
    except (CLIError, ValueError, FileNotFoundError, OSError) as e:
        print(f"mrisynth {a.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mrisynth {a.command}: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
