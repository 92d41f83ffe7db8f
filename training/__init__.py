"""Encoder training and evaluation for BrainDiVE Studio.

Command-line tools (see training/README.md)::

    python -m training.prepare_nsd      NSD release -> dataset .h5 (+ subject .npz)
    python -m training.prepare_generic  image folder + responses.npy -> dataset .h5
    python -m training.synthetic        synthetic ground-truth subject on S1 -> dataset .h5
    python -m training.train_encoder    dataset -> ClipLinearEncoder checkpoint (ridge, per-voxel alpha)
    python -m training.eval_encoder     checkpoint + dataset -> report.json, voxels.npz, flatmap PNG
    python -m training.build_demo_encoder   -> braindive/assets/demo-encoder
    python -m training.import_braindive  NeurIPS 2023 release checkpoint -> encoder + func1pt8mm subject
    python -m training.nsd_display      func1pt8mm subject -> pycortex surface + transform (flatmap display)

``training`` depends on ``braindive``; ``braindive`` never imports ``training``.
"""
