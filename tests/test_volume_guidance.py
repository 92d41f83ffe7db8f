"""Guidance on the volume subject S1-fullhead (S1's fullhead grid voxels, drawn through the fullhead transform)."""
import numpy as np
import torch

import braindive as bd
from braindive.presets import PRESETS


def test_demo_encoder_resampled_onto_the_volume_guides_ffa_up(tmp_path):
    demo = bd.demo.load()
    volume = bd.load_subject("S1-fullhead")
    encoder = bd.demo.resampled_encoder(demo.encoder, demo.subject, volume)
    # independent expectation: a volume voxel's prediction is the mean of the predictions of the surface voxels
    # on the vertices that show it
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    surface_pred = demo.encoder(images).detach().numpy()
    voxel_of_vertex = bd.flatmap.voxel_mapping(volume).voxel_of_vertex
    target = voxel_of_vertex[demo.subject.vertices]
    ffa = volume.roi("FFA")
    expected = np.stack([surface_pred[:, target == v].mean(1) for v in ffa[:50]], axis=1)
    assert np.allclose(encoder(images).detach().numpy()[:, ffa[:50]], expected, atol=1e-5)
    # it saves and loads as a checkpoint of that voxel space
    encoder.save(tmp_path / "enc")
    loaded = bd.load_encoder(tmp_path / "enc", subject=volume)
    assert loaded.config.subject_fingerprint == volume.fingerprint != demo.subject.fingerprint

    pipe = demo.pipe
    pipe.set_encoder(loaded)
    try:
        objective = bd.Objective.maximize(ffa)
        values = {}
        for scale in (0.0, PRESETS["demo"].scale):
            out = pipe(objective=objective, num_inference_steps=8, brain_guidance_scale=scale, num_images_per_prompt=2,
                       generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
            values[scale] = np.asarray(out.objective_values)
            assert out.activations.shape == (2, volume.n_voxels)
        assert (values[PRESETS["demo"].scale] > values[0.0]).all(), values
    finally:
        pipe.set_encoder(demo.encoder)
