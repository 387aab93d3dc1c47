"""Transcoder: one layer's MLP output predicted from that layer's MLP input through sparse JumpReLU features.

    f = JumpReLU_theta(W_enc x + b_enc),   y_hat = W_dec f + b_dec   (+ W_skip x with `skip_connection`)
    loss = mean_rows ||y - y_hat||^2 + sparsity_scale * lambda * S + lambda_p * P

It is the one-layer case of the cross-layer transcoder (`pipeline.coders.clt`): the same penalties
(tanh on activation times decoder norm, or L0), pre-activation loss, initialisation and straight-through
threshold gradients, taking [rows, d] instead of [rows, layer, d]. The optional skip connection is a
dense d x d map, zero at initialisation, so the features need not spend capacity on the part of the
MLP that is linear in its input.

FLOPs per training token: 12 d N, plus 6 d^2 with the skip connection (forward 2dN + 2dN + 2d^2,
backward twice the forward).
"""

from dataclasses import dataclass

import torch

from pipeline.coders.clt import CLTConfig, CrossLayerTranscoder


@dataclass
class TranscoderConfig(CLTConfig):
    kind: str = "transcoder"  # this kind


class Transcoder(CrossLayerTranscoder):
    kind = "transcoder"
    config_class = TranscoderConfig
    target_field = "target_hook"  # reads train.hook (e.g. mlp_in.3) and predicts train.target_hook (mlp_out.3)
    layered, cross_layer = False, False

    def __init__(self, d_in: int, n_features: int, **hparams):
        super().__init__(d_in, n_features, n_layers=1, **hparams)
        del self.hparams["n_layers"]  # always 1, so not part of a transcoder's saved config

    @staticmethod
    def _stack(x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-2)

    @staticmethod
    def _unstack(y: torch.Tensor) -> torch.Tensor:
        return y.squeeze(-2)
