"""BrainDiVE: a Stable Diffusion pipeline guided by a brain encoder.

Loads any SD-family checkpoint with ``from_pretrained`` (a Hub id such as
``stabilityai/stable-diffusion-2-1-base`` or a local folder) and generates images whose predicted
activity maximises an ``Objective``. Three guidance modes:

* ``"reference"`` runs the published per-step computation (see ``braindive.guidance``): a UNet pass,
  optional classifier-free guidance (CFG), self-attention guidance (SAG), then an extra UNet pass with
  gradients, the residual-mixed x0, a VAE decode, the encoder, and an update of the noise prediction
  (or of the latents for sigma schedulers). One image per call is how the paper ran it.
* ``"exact"`` (default) computes the same formulas with less work: the UNet pass with gradients also
  gives the noise prediction (with CFG: the conditional branch) and SAG's attention probabilities,
  and the encoder head keeps only the objective's voxels. In float32 its latents equal the
  reference's; ``Acceleration`` adds mixed precision, channels-last and ``torch.compile`` (by default
  bf16 autocast and channels-last on CUDA only, so GPU numbers match to mixed-precision rounding).
* ``"fast"`` adds the documented approximations of ``FastGuidance``, each a separate switch.
"""
from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass, field, replace
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
from . import tiny_decoder as T
from .encoders import BrainEncoder
from .objectives import Objective

__all__ = ["BrainDiVEPipeline", "BrainDiVEPipelineOutput", "FastGuidance", "Acceleration", "SCHEDULERS",
           "GUIDANCE_MODES", "SIGMA_SCHEDULERS"]

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


@dataclass(frozen=True)
class FastGuidance:
    """The approximations of ``guidance_mode="fast"``; each is its own switch (all off = ``"exact"``).

    Attributes:
        skip_unet_backprop: treat the noise prediction as a constant, so ``d s / d x_t`` is a scalar
            (``sqrt(1-a_t)/sqrt(a_t) + 1 - sqrt(1-a_t)``, or 1 for sigma schedulers) and the UNet runs
            forward only, once per step, as in unguided sampling.
        guide_every: compute the brain gradient every ``guide_every`` steps and reuse the last one between.
        dense_start: compute it at every step for this leading fraction of the steps (rounded up), then every
            ``guide_every`` steps. The early steps carry the guidance: on the demo, every 2nd step from the
            start kept 81-83% of EBA's gain, every step for the first 20% then every 4th step (the default,
            fewer gradients: 10 of 25 steps against 13) kept 99-101% on FFA, PPA and EBA
            (``benchmarks/RESULTS.md``, "Guided generation").
        decode_scale: area-resample the decoder input by this factor before the guidance decode (0.5 decodes
            a 512 px model at 256 px, close to the encoder's 224 px input, for a quarter of the decoder work).
            Off by default: it relies on a trained VAE decoding downsampled latents into a downsampled
            image; it kept 99% of the gain with the demo's trained toy VAE and almost none with random
            weights, and is unchecked on SD 2.1-base's VAE.
        tiny_decoder: a decoder used instead of the VAE for the guidance decode only, a diffusers
            ``AutoencoderTiny`` (TAESD weights, or one fit by ``training.distill_decoder``) that decodes the same
            latents into [-1, 1] images; see ``braindive.tiny_decoder``. The final image is always the VAE's.

    The defaults kept >= 90% of the exact mode's gain in ``benchmarks/RESULTS.md`` ("Guided generation").
    ``guidance_mode="fast"`` without ``fast_options`` runs the pipeline's fast recipe (``set_fast_recipe``;
    ``FastGuidance()`` unless set, the demo's is ``braindive.demo.DEMO_FAST_RECIPE``) with its tiny decoder
    when it has one (``set_tiny_decoder``; for SD 1.x/2.x VAEs TAESD from the Hub when it can be loaded).
    """

    skip_unet_backprop: bool = True
    guide_every: int = 4
    decode_scale: float = 1.0
    dense_start: float = 0.2
    tiny_decoder: torch.nn.Module | None = field(default=None, compare=False)

    def __post_init__(self):
        if not isinstance(self.guide_every, int) or self.guide_every < 1:
            raise ValueError(f"`guide_every` must be an integer >= 1, got {self.guide_every!r}.")
        if not 0 < self.decode_scale <= 1:
            raise ValueError(f"`decode_scale` must be in (0, 1], got {self.decode_scale!r}.")
        if not 0 <= self.dense_start <= 1:
            raise ValueError(f"`dense_start` must be in [0, 1], got {self.dense_start!r}.")

    def guides_at(self, step_index: int, num_steps: int) -> bool:
        """Whether step ``step_index`` (0-based) of ``num_steps`` computes a new brain gradient."""
        dense = math.ceil(round(self.dense_start * num_steps, 6))
        return step_index < dense or (step_index - dense) % self.guide_every == 0


_EXACT = FastGuidance(skip_unet_backprop=False, guide_every=1, decode_scale=1.0, dense_start=0.0)


@dataclass(frozen=True)
class Acceleration:
    """How the exact and fast modes execute, not which formulas they compute; ``"auto"`` decides per device.

    Mixed precision changes the numbers by its rounding; channels-last and compilation do not.

    Attributes:
        autocast_dtype: mixed precision for the models; auto: bfloat16 (float16 without bf16) on CUDA, none elsewhere.
        channels_last: UNet and VAE in channels-last memory format; auto: on CUDA only (no clear gain on CPU).
        compile: ``torch.compile`` the UNet, the VAE decoder and the encoder tower in place (once; not undone).
    """

    autocast_dtype: torch.dtype | str | None = "auto"
    channels_last: bool | str = "auto"
    compile: bool = False

    def resolve(self, device: torch.device) -> "Acceleration":
        cuda = torch.device(device).type == "cuda"
        dtype = self.autocast_dtype
        if dtype == "auto":
            dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else None
        channels_last = cuda if self.channels_last == "auto" else bool(self.channels_last)
        return Acceleration(dtype, channels_last, self.compile)


@dataclass
class _Guidance:
    """Per-call state of the step functions, set up once per call (for all its images)."""

    objective: Objective
    prompt_embeds: torch.Tensor
    guide_embeds: torch.Tensor
    do_cfg: bool
    guidance_scale: float
    sag_scale: float
    brain_scale: float
    store: "_AttnProbsStore"
    fast: FastGuidance = _EXACT
    num_steps: int = 1
    head: Callable | None = None
    last_grad: torch.Tensor | None = None
    step_offset: int = 0  # img2img: index of the first step run in the full schedule


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
    """Attention processor that computes attention explicitly and keeps the probabilities, detached (for SAG)."""

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
        probs = attn.get_attention_scores(query, key, attention_mask)
        self.attention_probs = probs.detach()
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](hidden_states))


class BrainDiVEPipeline(DiffusionPipeline):
    """Brain-guided Stable Diffusion. Set the encoder with ``from_pretrained(..., encoder=)`` or ``set_encoder``."""

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
        self.acceleration = Acceleration()
        self._applied_acceleration: Acceleration | None = None
        self.tiny_decoder = None
        self._looked_up_tiny_decoder = False
        self.fast_recipe = FastGuidance()

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

    def set_tiny_decoder(self, decoder) -> None:
        """Attach the decoder ``fast`` mode guides through by default (None: the full VAE); checked against the VAE."""
        if decoder is not None:
            T.check_tiny_decoder(decoder, self.vae)
            decoder = decoder.to(self.device).eval().requires_grad_(False)
        self.tiny_decoder, self._looked_up_tiny_decoder = decoder, True

    def set_fast_recipe(self, options: FastGuidance) -> None:
        """Make ``options`` what ``fast`` runs without ``fast_options``; its tiny decoder (if any) becomes the attached one."""
        if not isinstance(options, FastGuidance):
            raise TypeError(f"`options` must be a FastGuidance, got {type(options).__name__}.")
        if options.tiny_decoder is not None:
            self.set_tiny_decoder(options.tiny_decoder)
        self.fast_recipe = replace(options, tiny_decoder=None)

    def default_fast_options(self) -> FastGuidance:
        """The fast recipe (``FastGuidance()`` unless ``set_fast_recipe``) with the attached tiny decoder.

        The first call looks up TAESD for SD 1.x/2.x VAEs when no decoder was attached.
        """
        if not self._looked_up_tiny_decoder:
            self.set_tiny_decoder(T.hub_tiny_decoder(self.vae))
        return replace(self.fast_recipe, tiny_decoder=self.tiny_decoder)

    def set_acceleration(self, acceleration: Acceleration) -> None:
        """Choose how the exact and fast modes execute; module set-up happens once, on their next call."""
        if not isinstance(acceleration, Acceleration):
            raise TypeError(f"`acceleration` must be an Acceleration, got {type(acceleration).__name__}.")
        self.acceleration = acceleration

    def _accelerate(self) -> Acceleration:
        """Resolve ``self.acceleration`` for this device; apply memory format and compilation when it changed."""
        acc = self.acceleration.resolve(self.device)
        if acc != self._applied_acceleration:
            memory_format = torch.channels_last if acc.channels_last else torch.contiguous_format
            self.unet.to(memory_format=memory_format)
            self.vae.to(memory_format=memory_format)
            if acc.compile:
                for module in (self.unet, self.vae.decoder, getattr(self.encoder, "tower", None)):
                    if module is not None:
                        module.compile()
            self._applied_acceleration = acc
        return acc

    def set_scheduler(self, name: str) -> None:
        """Swap the scheduler, keeping the model's noise schedule: one of ``SCHEDULERS``."""
        if name not in SCHEDULERS:
            raise ValueError(f"`scheduler` must be one of {sorted(SCHEDULERS)}, got {name!r}.")
        extra = {"skip_prk_steps": True} if name == "pndm" else {}
        if name == "ddim":  # latents are not images: never clip x0 to [-1, 1] unless the model's config asks
            extra["clip_sample"] = self.scheduler.config.get("clip_sample", False)
        self.scheduler = SCHEDULERS[name].from_config(self.scheduler.config, **extra)
        self.scheduler_name = name

    def to(self, *args, **kwargs):
        pipe = super().to(*args, **kwargs)
        for module in (self.encoder, self.tiny_decoder):
            if module is not None:
                module.to(self.device)
        return pipe

    def interrupt(self) -> None:
        """Stop the running generation after the current step; the partial result is returned."""
        self._interrupt = True

    # ------------------------------------------------------------------ inputs

    def check_inputs(self, objective, height, width, num_inference_steps, brain_guidance_scale, sag_scale,
                     num_images_per_prompt, generator, guidance_mode, output_type, callback_tensors,
                     fast_options=None):
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
        if fast_options is not None and (guidance_mode != "fast" or not isinstance(fast_options, FastGuidance)):
            raise ValueError(
                f"`fast_options` must be a FastGuidance used with guidance_mode='fast', got {fast_options!r} "
                f"with guidance_mode={guidance_mode!r}.")
        if fast_options is not None and fast_options.tiny_decoder is not None:
            T.check_tiny_decoder(fast_options.tiny_decoder, self.vae)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        unknown = [name for name in callback_tensors if name not in CALLBACK_TENSORS]
        if unknown:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` must be among {CALLBACK_TENSORS}, got {unknown}.")
        if sag_scale > 0 and self._sag_attention() is None:
            raise ValueError("`sag_scale` > 0 needs a UNet whose mid block has self-attention; set sag_scale=0.")
        if sag_scale > 0 and min(height, width) // self.vae_scale_factor <= 4:
            raise ValueError(f"`sag_scale` > 0 needs latents larger than its 9x9 blur's padding (4): {height}x{width} px "
                             f"gives {height // self.vae_scale_factor}x{width // self.vae_scale_factor}; use larger "
                             "images or sag_scale=0.")
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

    def get_timesteps(self, num_inference_steps: int, strength: float):
        """The last ``floor(strength * num_inference_steps)`` timesteps and the index of the first in the schedule."""
        run = min(math.floor(round(num_inference_steps * strength, 6)), num_inference_steps)
        # counted from the end: PNDM's schedule has one step more than asked (at the start)
        start = 0 if run == num_inference_steps else len(self.scheduler.timesteps) - run * self.scheduler.order
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start)
        return self.scheduler.timesteps[start:], start

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` images in [0, 1] -> scaled VAE latents (the posterior mean: deterministic)."""
        dist = self.vae.encode(pixels.to(self.device, self.vae.dtype) * 2 - 1).latent_dist
        return dist.mode() * self.vae.config.scaling_factor

    def prepare_image_latents(self, image, batch, height, width, dtype, generator, timesteps):
        """``image``'s latents noised to the first of ``timesteps`` (not noised when there are none)."""
        pixels = image_tensor(image, height, width)
        if len(pixels) not in (1, batch):
            raise ValueError(f"`image` holds {len(pixels)} images for {batch} outputs; give 1 or {batch}.")
        latents = self.encode_image(pixels.expand(batch, -1, -1, -1) if len(pixels) == 1 else pixels).to(dtype)
        if not len(timesteps):
            return latents
        noise = randn_tensor(latents.shape, generator=generator, device=self.device, dtype=dtype)
        return self.scheduler.add_noise(latents, noise, timesteps[:1].repeat(batch))

    def _sag_attention(self):
        try:
            return self.unet.mid_block.attentions[0].transformer_blocks[0].attn1
        except (AttributeError, IndexError, TypeError):
            return None

    def _alpha_prod(self, t) -> torch.Tensor:
        return self.scheduler.alphas_cumprod[int(t)].to(self.device)

    def _sigma(self, step_index) -> torch.Tensor:
        return self.scheduler.sigmas[step_index].to(self.device)

    def _unet(self, sample, t, embeds) -> torch.Tensor:
        """Noise prediction in the latents' dtype (the UNet may run in mixed precision)."""
        return self.unet(sample, t, encoder_hidden_states=embeds).sample.to(sample.dtype)

    # ------------------------------------------------------------------ one step: shared pieces

    def sag_step(self, latents, noise_pred, noise_uncond, t, step_index, attn_probs, prompt_embeds, sag_scale, do_cfg):
        """Self-attention guidance as the published (diffusers-derived) code."""
        if do_cfg:
            return self._sag_correction(latents, noise_pred, noise_uncond, t, step_index, attn_probs.chunk(2)[0],
                                        prompt_embeds.chunk(2)[0], sag_scale)
        return self._sag_correction(latents, noise_pred, noise_pred, t, step_index, attn_probs, prompt_embeds,
                                    sag_scale)

    def _sag_correction(self, latents, noise_pred, base, t, step_index, uncond_attn, embeds, sag_scale):
        """``noise_pred + sag_scale (base - eps(degraded x0))``, x0 and the re-noising from ``base``.

        x0 and the re-noising follow the scheduler's parameterisation, and the degraded latents go
        through ``scale_model_input`` like any UNet input (both only matter for sigma schedulers).
        """
        x0 = self._clean_estimate(latents, base, t, step_index)
        degraded = G.sag_degrade(x0, uncond_attn, self._sag_attention().heads, base,
                                 lambda x, eps: self.scheduler.add_noise(x, noise=eps, timesteps=t[None]))
        degraded = self.scheduler.scale_model_input(degraded, t)
        return noise_pred + sag_scale * (base - self._unet(degraded, t, embeds))

    def _clean_estimate(self, latents, eps, t, step_index):
        """x0 from ``x_t`` and ``eps``: ``x_t - sigma_t eps`` for sigma schedulers, the DDIM formula otherwise."""
        if isinstance(self.scheduler, SIGMA_SCHEDULERS):
            return G.sigma_x0(latents, eps, self._sigma(step_index))
        return G.predicted_x0(latents, eps, self._alpha_prod(t))

    def _decoder_input(self, latents, eps, t, step_index):
        """The published decoder input: ``x_t - sigma_t eps`` (sigma schedulers) or the residual-mixed x0."""
        x0 = self._clean_estimate(latents, eps, t, step_index)
        if isinstance(self.scheduler, SIGMA_SCHEDULERS):
            return x0
        return G.residual_mix(x0, latents, self._alpha_prod(t))

    def _apply_brain_gradient(self, noise_pred, latents, grad, t, step_index):
        """The published update: ``(eps - sqrt(1-a_t) g, x_t)`` or, for sigma schedulers, ``(eps, x_t + sigma_t^2 g)``."""
        if isinstance(self.scheduler, SIGMA_SCHEDULERS):
            return noise_pred, G.sigma_update(latents, grad, self._sigma(step_index))
        return G.guided_eps(noise_pred, grad, self._alpha_prod(t)), latents

    # ------------------------------------------------------------------ one step: reference

    @torch.enable_grad()
    def brain_step(self, latents, noise_pred, t, step_index, text_embeds, objective, scale):
        """The published brain-guidance step. Returns the new ``(noise_pred, latents)``."""
        latents = latents.detach().requires_grad_()
        model_input = self.scheduler.scale_model_input(latents, t)
        eps = self.unet(model_input, t, encoder_hidden_states=text_embeds).sample
        image = G.decode_to_unit(self.vae, self._decoder_input(latents, eps, t, step_index))
        activations = self.encoder(image)
        _check_finite(activations, step_index)
        grad = -torch.autograd.grad(G.brain_loss(objective(activations), scale), latents)[0]
        return self._apply_brain_gradient(noise_pred, latents.detach(), grad, t, step_index)

    def _reference_step(self, g: _Guidance, latents, t, step_index):
        """UNet (+ CFG), SAG's extra pass, then ``brain_step``'s own UNet pass with gradients."""
        model_input = torch.cat([latents] * 2) if g.do_cfg else latents
        model_input = self.scheduler.scale_model_input(model_input, t)
        noise_pred = self.unet(model_input, t, encoder_hidden_states=g.prompt_embeds).sample
        noise_uncond = None
        if g.do_cfg:
            noise_uncond, noise_text = noise_pred.chunk(2)
            noise_pred = noise_uncond + g.guidance_scale * (noise_text - noise_uncond)
        if g.sag_scale > 0:
            noise_pred = self.sag_step(latents, noise_pred, noise_uncond, t, step_index, g.store.attention_probs,
                                       g.prompt_embeds, g.sag_scale, g.do_cfg)
        if g.brain_scale != 0:
            noise_pred, latents = self.brain_step(latents, noise_pred, t, step_index, g.guide_embeds,
                                                  g.objective, g.brain_scale)
        return noise_pred, latents

    # ------------------------------------------------------------------ one step: exact and fast

    def _guided_step(self, g: _Guidance, latents, t, step_index):
        """One UNet pass gives the noise prediction, SAG's attention and (exact mode) the graph to x_t."""
        guide = g.brain_scale != 0 and g.fast.guides_at(step_index - g.step_offset, g.num_steps)
        x = latents.detach().requires_grad_(guide)
        noise_uncond, eps, uncond_attn = self._predict_noise(g, x, t, backprop=guide and not g.fast.skip_unet_backprop)
        if guide:
            g.last_grad = self._brain_gradient(g, x, eps, t, step_index)
        eps = eps.detach()
        noise_pred = eps if noise_uncond is None else noise_uncond + g.guidance_scale * (eps - noise_uncond)
        if g.sag_scale > 0:
            base, embeds = (eps, g.guide_embeds) if noise_uncond is None else (noise_uncond, g.prompt_embeds.chunk(2)[0])
            noise_pred = self._sag_correction(latents, noise_pred, base, t, step_index, uncond_attn, embeds,
                                              g.sag_scale)
        if g.last_grad is None:
            return noise_pred, latents
        return self._apply_brain_gradient(noise_pred, latents, g.last_grad, t, step_index)

    def _predict_noise(self, g: _Guidance, x, t, backprop: bool):
        """``(unconditional eps or None, guiding eps, SAG's unconditional attention probabilities)``.

        With ``backprop`` the guiding (conditional) pass keeps its graph to ``x``; with CFG the
        unconditional half then runs on its own, without gradients, after it.
        """
        with torch.set_grad_enabled(backprop):
            model_input = self.scheduler.scale_model_input(x, t)
            if not g.do_cfg:
                return None, self._unet(model_input, t, g.guide_embeds), g.store.attention_probs
            if backprop:
                eps = self._unet(model_input, t, g.guide_embeds)
        uncond_embeds = g.prompt_embeds.chunk(2)[0]
        if backprop:
            return self._unet(model_input.detach(), t, uncond_embeds), eps, g.store.attention_probs
        noise_uncond, eps = self._unet(torch.cat([model_input] * 2), t, g.prompt_embeds).chunk(2)
        probs = g.store.attention_probs
        return noise_uncond, eps, None if probs is None else probs.chunk(2)[0]

    @torch.enable_grad()
    def _brain_gradient(self, g: _Guidance, x, eps, t, step_index) -> torch.Tensor:
        """``-d loss / d x_t`` through the (resized) decode and the restricted head; ``eps`` may be a constant."""
        sample = G.resize_latents(self._decoder_input(x, eps, t, step_index), g.fast.decode_scale)
        tiny = g.fast.tiny_decoder
        image = G.decode_to_unit(tiny or self.vae, sample)
        if tiny is not None and not torch.isfinite(image).all():
            raise FloatingPointError(f"Tiny decoder {T.decoder_name(tiny)} returned NaN/inf at step {step_index}; "
                                     "check its weights or guide without it (fast_options.tiny_decoder=None).")
        activations, values = g.head(image)
        _check_finite(activations, step_index)
        return -torch.autograd.grad(G.brain_loss(values, g.brain_scale), x)[0]

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
        image=None,
        strength: float = 1.0,
        guidance_mode: str = "exact",
        fast_options: FastGuidance | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ):
        """Generate images that drive ``objective`` up (down for a negative ``brain_guidance_scale``).

        ``guidance_mode`` is ``"exact"`` (the published numbers, computed efficiently), ``"reference"``
        (the published computation as written) or ``"fast"`` (approximations set by ``fast_options``,
        default ``default_fast_options()``). ``callback_on_step_end(pipe, step, timestep, tensors)`` follows
        diffusers' contract: ``tensors`` holds the names asked for in ``callback_on_step_end_tensor_inputs``
        (``latents``, ``noise_pred``, ``pred_x0`` and ``x0_preview``, a VAE decode of the predicted clean
        image in [0, 1]); a returned ``latents`` replaces the current ones. ``pipe.interrupt()`` stops
        after the current step.

        ``image`` (diffusers img2img style: a PIL image, a list of them, an ``[H, W, 3]`` / ``[B, H, W, 3]``
        array or a ``[B, 3, H, W]`` tensor in [0, 1], resized to ``height`` x ``width``) starts the run from
        that image instead of pure noise: its VAE latents (the posterior mean) are noised to ``strength`` in
        [0, 1] and only the last ``floor(strength * num_inference_steps)`` steps run; strength 0 returns
        the image's VAE round trip, 1 starts from the noisiest step.
        """
        # 0. Defaults
        default_size = self.unet.config.sample_size * self.vae_scale_factor
        height = default_size if height is None else height
        width = default_size if width is None else width
        callback_tensors = list(callback_on_step_end_tensor_inputs or ())

        # 1. Check inputs
        self.check_inputs(objective, height, width, num_inference_steps, brain_guidance_scale, sag_scale,
                          num_images_per_prompt, generator, guidance_mode, output_type, callback_tensors,
                          fast_options)
        _check_image_inputs(image, strength, latents)
        self._interrupt = False
        do_cfg = guidance_scale > 1.0
        batch = num_images_per_prompt

        # 2. Encode the prompt
        prompt_embeds = self.encode_prompt(prompt, negative_prompt, batch, do_cfg)
        guide_embeds = prompt_embeds.chunk(2)[1] if do_cfg else prompt_embeds

        # 3. Timesteps and initial latents: pure noise, or `image` noised to `strength`
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps, step_offset = self.scheduler.timesteps, 0
        if image is None:
            latents = self.prepare_latents(batch, height, width, prompt_embeds.dtype, generator, latents)
        else:
            timesteps, step_offset = self.get_timesteps(num_inference_steps, strength)
            latents = self.prepare_image_latents(image, batch, height, width, prompt_embeds.dtype, generator,
                                                 timesteps)
        extra_step_kwargs = self._extra_step_kwargs(generator, eta)

        # 4. Guidance set-up, once for all images of the call
        g = _Guidance(objective, prompt_embeds, guide_embeds, do_cfg, guidance_scale, sag_scale,
                      brain_guidance_scale, _AttnProbsStore(), num_steps=len(timesteps), step_offset=step_offset)
        step, execution = self._reference_step, contextlib.nullcontext()
        if guidance_mode != "reference":
            step, execution = self._guided_step, self._autocast(self._accelerate())
            g.fast = (fast_options or self.default_fast_options()) if guidance_mode == "fast" else _EXACT
            g.head = G.objective_head(self.encoder, objective)

        # 5. Denoising loop
        attn = self._sag_attention()
        original_processor = attn.processor if attn is not None else None
        if sag_scale > 0:
            attn.set_processor(g.store)
        steps_done = 0
        try:
            with self.progress_bar(total=len(timesteps)) as progress:
                for i, t in enumerate(timesteps):
                    if self._interrupt:
                        break
                    with execution:
                        noise_pred, latents = step(g, latents, t, step_offset + i)
                    pred_x0 = self._clean_estimate(latents, noise_pred, t, step_offset + i) if callback_tensors else None
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

        # 6. Decode, score with the encoder
        return self._finish(latents, objective, output_type, return_dict, steps_done, self._interrupt)

    def _autocast(self, acceleration: Acceleration):
        if acceleration.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=acceleration.autocast_dtype)

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


def _check_image_inputs(image, strength, latents) -> None:
    if image is None:
        return
    if latents is not None:
        raise ValueError("`latents` and `image` cannot both be given: an image run makes its own noisy latents.")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise ValueError(f"`strength` must be a number in [0, 1], got {strength!r}.")


def image_tensor(image, height: int, width: int) -> torch.Tensor:
    """A PIL image (or list), ``[H, W, 3]`` / ``[B, H, W, 3]`` array or ``[B, 3, H, W]`` tensor in [0, 1]
    -> float32 ``[B, 3, height, width]`` in [0, 1] (bilinear, antialiased resize when the size differs)."""
    if isinstance(image, PIL.Image.Image):
        image = [image]
    if isinstance(image, (list, tuple)) and image and all(isinstance(im, PIL.Image.Image) for im in image):
        image = np.stack([np.asarray(im.convert("RGB"), np.float32) / 255 for im in image])
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8:
            image = image.astype(np.float32) / 255
        image = torch.from_numpy(np.asarray(image, np.float32))
        image = image[None] if image.ndim == 3 else image
        if image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(f"`image` array must be [H, W, 3] or [B, H, W, 3], got shape {tuple(image.shape)}.")
        image = image.permute(0, 3, 1, 2)
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"`image` must be a PIL image, a list of them, an array or a tensor, got {type(image).__name__}.")
    image = image[None] if image.ndim == 3 else image
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"`image` tensor must be [B, 3, H, W], got shape {tuple(image.shape)}.")
    image = image.detach().float().cpu()
    if not torch.isfinite(image).all() or image.min() < 0 or image.max() > 1:
        raise ValueError(f"`image` values must lie in [0, 1], got [{float(image.min()):.3g}, {float(image.max()):.3g}].")
    if tuple(image.shape[-2:]) != (height, width):
        image = torch.nn.functional.interpolate(image, size=(height, width), mode="bilinear", antialias=True,
                                                align_corners=False).clamp(0, 1)
    return image


def _to_output(pixels: torch.Tensor, output_type: str):
    if output_type == "pt":
        return pixels.cpu()
    array = pixels.cpu().permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return array
    return [PIL.Image.fromarray((img * 255).round().astype(np.uint8)) for img in array]
