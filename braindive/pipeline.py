"""BrainDiVE: a Stable Diffusion pipeline guided by a brain encoder.

Loads any SD-family checkpoint with ``from_pretrained`` (a Hub id such as
``stabilityai/stable-diffusion-2-1-base`` or a local folder) and generates images whose predicted
activity maximises an ``Objective``. ``guidance_mode="reference"`` runs the published per-step
computation (see ``braindive.guidance``): an extra UNet pass with gradients, the residual-mixed x0,
a VAE decode, the encoder, and an update of the noise prediction (or of the latents for sigma
schedulers), after self-attention guidance (SAG) and optional classifier-free guidance.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UNet2DConditionModel,
)
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from . import guidance as G
from .encoders import BrainEncoder
from .objectives import Objective

__all__ = ["BrainDiVEPipeline", "BrainDiVEPipelineOutput", "SCHEDULERS", "GUIDANCE_MODES", "SIGMA_SCHEDULERS"]

SCHEDULERS = {
    "dpm": DPMSolverMultistepScheduler,
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "lms": LMSDiscreteScheduler,
    "euler": EulerDiscreteScheduler,
}
SIGMA_SCHEDULERS = (LMSDiscreteScheduler, EulerDiscreteScheduler)
GUIDANCE_MODES = ("reference", "exact", "fast")
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
CALLBACK_TENSORS = ("latents", "noise_pred", "pred_x0", "x0_preview")


@dataclass
class BrainDiVEPipelineOutput(BaseOutput):
    """Images plus the encoder's view of them.

    Attributes:
        images: PIL images, a ``[B,H,W,3]`` array, a ``[B,3,H,W]`` tensor, or latents.
        activations: ``[B, n_voxels]`` encoder prediction for the final images (CPU float32).
        objective_values: ``[B]`` objective of the final images.
        steps_completed: denoising steps run (fewer than asked if interrupted).
        interrupted: whether ``interrupt()`` stopped the run early.
    """

    images: list | np.ndarray | torch.Tensor
    activations: torch.Tensor | None
    objective_values: torch.Tensor | None
    steps_completed: int
    interrupted: bool


class _AttnProbsStore:
    """Attention processor that computes attention explicitly and keeps the probabilities (for SAG)."""

    def __init__(self):
        self.attention_probs = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        batch_size, sequence_length, _ = hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))
        self.attention_probs = attn.get_attention_scores(query, key, attention_mask)
        hidden_states = attn.batch_to_head_dim(torch.bmm(self.attention_probs, value))
        return attn.to_out[1](attn.to_out[0](hidden_states))


class BrainDiVEPipeline(DiffusionPipeline):
    """Brain-guided Stable Diffusion. Set the encoder with ``from_pretrained(..., encoder=)`` or ``set_encoder``."""

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: DPMSolverMultistepScheduler,
    ):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.encoder: BrainEncoder | None = None
        self._interrupt = False

    # ------------------------------------------------------------------ set-up

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, encoder: BrainEncoder | None = None, scheduler_name: str = "dpm", **kwargs):
        """Load SD components (Hub id or folder), attach ``encoder`` and switch to ``scheduler_name``."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        pipe.set_scheduler(scheduler_name)
        if encoder is not None:
            pipe.set_encoder(encoder)
        return pipe

    def set_encoder(self, encoder: BrainEncoder) -> None:
        if not isinstance(encoder, torch.nn.Module):
            raise TypeError(f"`encoder` must be a BrainEncoder (torch module), got {type(encoder).__name__}.")
        self.encoder = encoder.to(self.device).eval().requires_grad_(False)

    def set_scheduler(self, name: str) -> None:
        """Swap the scheduler, keeping the model's noise schedule: one of ``SCHEDULERS``."""
        if name not in SCHEDULERS:
            raise ValueError(f"`scheduler` must be one of {sorted(SCHEDULERS)}, got {name!r}.")
        extra = {"skip_prk_steps": True} if name == "pndm" else {}
        self.scheduler = SCHEDULERS[name].from_config(self.scheduler.config, **extra)
        self.scheduler_name = name

    def to(self, *args, **kwargs):
        pipe = super().to(*args, **kwargs)
        if self.encoder is not None:
            self.encoder.to(self.device)
        return pipe

    def interrupt(self) -> None:
        """Stop the running generation after the current step; the partial result is returned."""
        self._interrupt = True

    # ------------------------------------------------------------------ inputs

    def check_inputs(self, objective, height, width, num_inference_steps, brain_guidance_scale, sag_scale,
                     num_images_per_prompt, generator, guidance_mode, output_type, callback_tensors):
        if self.encoder is None:
            raise ValueError("No brain encoder: pass `encoder=` to from_pretrained or call `set_encoder`.")
        if not isinstance(objective, Objective):
            raise ValueError(f"`objective` must be a braindive Objective, got {type(objective).__name__}.")
        objective.check(self.encoder.n_voxels)
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % 8:
                raise ValueError(f"`{name}` must be a positive multiple of 8, got {value!r}.")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be an integer >= 1, got {num_inference_steps!r}.")
        if not np.isfinite(brain_guidance_scale):
            raise ValueError(f"`brain_guidance_scale` must be finite, got {brain_guidance_scale!r}.")
        if not np.isfinite(sag_scale) or sag_scale < 0:
            raise ValueError(f"`sag_scale` must be >= 0, got {sag_scale!r}.")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be an integer >= 1, got {num_images_per_prompt!r}.")
        if isinstance(generator, list) and len(generator) != num_images_per_prompt:
            raise ValueError(
                f"`generator` list has {len(generator)} generators for {num_images_per_prompt} images; they must match."
            )
        if guidance_mode not in GUIDANCE_MODES:
            raise ValueError(f"`guidance_mode` must be one of {GUIDANCE_MODES}, got {guidance_mode!r}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        unknown = [name for name in callback_tensors if name not in CALLBACK_TENSORS]
        if unknown:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` must be among {CALLBACK_TENSORS}, got {unknown}.")
        if sag_scale > 0 and self._sag_attention() is None:
            raise ValueError("`sag_scale` > 0 needs a UNet whose mid block has self-attention; set sag_scale=0.")
        if self.scheduler.config.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(
                f"Brain guidance needs an epsilon-prediction model, got prediction_type="
                f"{self.scheduler.config.prediction_type!r} (use e.g. stable-diffusion-2-1-base)."
            )

    def encode_prompt(self, prompt: str, negative_prompt: str | None, batch: int, do_cfg: bool):
        """Text embeddings ``[B, L, D]`` (``[2B, L, D]`` unconditional first when ``do_cfg``)."""

        def embed(text):
            ids = self.tokenizer(
                [text] * batch, padding="max_length", max_length=self.tokenizer.model_max_length,
                truncation=True, return_tensors="pt",
            ).input_ids.to(self.device)
            return self.text_encoder(ids)[0]

        cond = embed(prompt)
        return torch.cat([embed(negative_prompt or ""), cond]) if do_cfg else cond

    def prepare_latents(self, batch, height, width, dtype, generator, latents=None):
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}.")
        return latents.to(self.device, dtype) * self.scheduler.init_noise_sigma

    def _sag_attention(self):
        try:
            return self.unet.mid_block.attentions[0].transformer_blocks[0].attn1
        except (AttributeError, IndexError, TypeError):
            return None

    def _alpha_prod(self, t) -> torch.Tensor:
        return self.scheduler.alphas_cumprod[int(t)].to(self.device)

    # ------------------------------------------------------------------ one step

    def sag_step(self, latents, noise_pred, noise_uncond, t, attn_probs, prompt_embeds, sag_scale, do_cfg):
        """Self-attention guidance exactly as the published (diffusers-derived) code."""
        attn = self._sag_attention()
        if do_cfg:
            uncond_attn, _ = attn_probs.chunk(2)
            base, embeds = noise_uncond, prompt_embeds.chunk(2)[0]
        else:
            uncond_attn, base, embeds = attn_probs, noise_pred, prompt_embeds
        alpha_prod = self._alpha_prod(t)
        x0 = G.predicted_x0(latents, base, alpha_prod)
        degraded = G.sag_degrade(x0, uncond_attn, attn.heads, base,
                                 lambda x, eps: self.scheduler.add_noise(x, noise=eps, timesteps=t[None]))
        degraded_pred = self.unet(degraded, t, encoder_hidden_states=embeds).sample
        return noise_pred + sag_scale * (base - degraded_pred)

    @torch.enable_grad()
    def brain_step(self, latents, noise_pred, t, step_index, text_embeds, objective, scale):
        """The published brain-guidance step. Returns the new ``(noise_pred, latents)``."""
        latents = latents.detach().requires_grad_()
        model_input = self.scheduler.scale_model_input(latents, t)
        eps = self.unet(model_input, t, encoder_hidden_states=text_embeds).sample
        sigma_type = isinstance(self.scheduler, SIGMA_SCHEDULERS)
        if sigma_type:
            sigma = self.scheduler.sigmas[step_index].to(self.device)
            sample = G.sigma_x0(latents, eps, sigma)
        else:
            alpha_prod = self._alpha_prod(t)
            sample = G.residual_mix(G.predicted_x0(latents, eps, alpha_prod), latents, alpha_prod)
        image = G.decode_to_unit(self.vae, sample)
        activations = self.encoder(image)
        _check_finite(activations, step_index)
        grad = -torch.autograd.grad(G.brain_loss(objective(activations), scale), latents)[0]
        latents = latents.detach()
        if sigma_type:
            return noise_pred, G.sigma_update(latents, grad, sigma)
        return G.guided_eps(noise_pred, grad, alpha_prod), latents

    # ------------------------------------------------------------------ call

    @torch.no_grad()
    def __call__(
        self,
        objective: Objective,
        prompt: str = "",
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        brain_guidance_scale: float = 130.0,
        sag_scale: float = 0.75,
        guidance_scale: float = 0.0,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        guidance_mode: str = "reference",
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ):
        """Generate images that drive ``objective`` up (down for a negative ``brain_guidance_scale``).

        ``callback_on_step_end(pipe, step, timestep, tensors)`` follows diffusers' contract: ``tensors``
        holds the names asked for in ``callback_on_step_end_tensor_inputs`` (``latents``, ``noise_pred``,
        ``pred_x0`` and ``x0_preview``, a VAE decode of the predicted clean image in [0, 1]); a returned
        ``latents`` replaces the current ones. ``pipe.interrupt()`` stops after the current step.
        """
        # 0. Defaults
        default_size = self.unet.config.sample_size * self.vae_scale_factor
        height = default_size if height is None else height
        width = default_size if width is None else width
        callback_tensors = list(callback_on_step_end_tensor_inputs or ())

        # 1. Check inputs
        self.check_inputs(objective, height, width, num_inference_steps, brain_guidance_scale, sag_scale,
                          num_images_per_prompt, generator, guidance_mode, output_type, callback_tensors)
        self._interrupt = False
        do_cfg = guidance_scale > 1.0
        do_sag = sag_scale > 0.0
        batch = num_images_per_prompt

        # 2. Encode the prompt
        prompt_embeds = self.encode_prompt(prompt, negative_prompt, batch, do_cfg)
        guide_embeds = prompt_embeds.chunk(2)[1] if do_cfg else prompt_embeds

        # 3. Timesteps and initial latents
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps = self.scheduler.timesteps
        latents = self.prepare_latents(batch, height, width, prompt_embeds.dtype, generator, latents)
        extra_step_kwargs = self._extra_step_kwargs(generator, eta)

        # 4. Denoising loop
        store = _AttnProbsStore()
        attn = self._sag_attention()
        original_processor = attn.processor if attn is not None else None
        if do_sag:
            attn.set_processor(store)
        steps_done = 0
        try:
            with self.progress_bar(total=len(timesteps)) as progress:
                for i, t in enumerate(timesteps):
                    if self._interrupt:
                        break
                    model_input = torch.cat([latents] * 2) if do_cfg else latents
                    model_input = self.scheduler.scale_model_input(model_input, t)
                    noise_pred = self.unet(model_input, t, encoder_hidden_states=prompt_embeds).sample
                    noise_uncond = None
                    if do_cfg:
                        noise_uncond, noise_text = noise_pred.chunk(2)
                        noise_pred = noise_uncond + guidance_scale * (noise_text - noise_uncond)
                    if do_sag:
                        noise_pred = self.sag_step(latents, noise_pred, noise_uncond, t, store.attention_probs,
                                                   prompt_embeds, sag_scale, do_cfg)
                    if brain_guidance_scale != 0:
                        noise_pred, latents = self.brain_step(latents, noise_pred, t, i, guide_embeds, objective,
                                                              brain_guidance_scale)
                    pred_x0 = G.predicted_x0(latents, noise_pred, self._alpha_prod(t)) if callback_tensors else None
                    latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs).prev_sample
                    steps_done = i + 1
                    if callback_on_step_end is not None:
                        tensors = self._callback_tensors(callback_tensors, latents, noise_pred, pred_x0)
                        result = callback_on_step_end(self, i, t, tensors) or {}
                        latents = result.get("latents", latents)
                    progress.update()
        finally:
            if attn is not None:
                attn.set_processor(original_processor)

        # 5. Decode, score with the encoder
        return self._finish(latents, objective, output_type, return_dict, steps_done, self._interrupt)

    def _callback_tensors(self, names, latents, noise_pred, pred_x0) -> dict:
        available = {"latents": lambda: latents, "noise_pred": lambda: noise_pred, "pred_x0": lambda: pred_x0,
                     "x0_preview": lambda: G.decode_to_unit(self.vae, pred_x0)}
        return {name: available[name]() for name in names}

    def _extra_step_kwargs(self, generator, eta) -> dict:
        params = set(inspect.signature(self.scheduler.step).parameters)
        kwargs = {}
        if "eta" in params:
            kwargs["eta"] = eta
        if "generator" in params:
            kwargs["generator"] = generator
        return kwargs

    def _finish(self, latents, objective, output_type, return_dict, steps_done, interrupted):
        if output_type == "latent":
            images, activations, values = latents, None, None
        else:
            pixels = G.decode_to_unit(self.vae, latents)
            activations = self.encoder(pixels).float()
            _check_finite(activations, steps_done)
            values = objective(activations).cpu()
            activations = activations.cpu()
            images = _to_output(pixels, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, activations, values
        return BrainDiVEPipelineOutput(images=images, activations=activations, objective_values=values,
                                       steps_completed=steps_done, interrupted=interrupted)


def _check_finite(activations: torch.Tensor, step: int) -> None:
    if not torch.isfinite(activations).all():
        bad = int((~torch.isfinite(activations)).sum())
        raise FloatingPointError(
            f"The brain encoder returned {bad} NaN/inf values at step {step}; check the encoder checkpoint "
            "and lower `brain_guidance_scale` if the latents diverged."
        )


def _to_output(pixels: torch.Tensor, output_type: str):
    if output_type == "pt":
        return pixels.cpu()
    array = pixels.cpu().permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return array
    return [PIL.Image.fromarray((img * 255).round().astype(np.uint8)) for img in array]
