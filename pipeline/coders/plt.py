"""Per-layer transcoders (PLT): one JumpReLU transcoder per layer of `train.layers`, trained together.

The per-layer arm of Circuit Tracing's comparison with the cross-layer transcoder (`pipeline.coders.clt`):
over L layers with n features each (`n_features` = L * n in all), the features of layer s read that
layer's MLP input x_s and write to that layer's MLP output only,

    f_s = JumpReLU_theta_s(W_enc[s] x_s + b_enc[s]),   y_hat_s = W_dec[s][0] f_s + b_dec[s]   (+ W_skip[s] x_s)

so it is the CLT's machinery with one decoder block per source layer (`cross_layer` False). Its loss is
the CLT's, which here is the sum over layers of each layer's transcoder loss (`pipeline.coders.transcoder`:
reconstruction, tanh or L0 penalty, pre-activation loss, each feature's decoder norm that of its one
column). The layers share no parameter, so training them together takes the same steps as training each
alone with the same recipe, except where the gradient clip (`train.grad_clip`, a norm over all the
coder's gradients) engages.

FLOPs per training token, with d the width of each layer and N = L * n:

    forward = 2 d N (encoders) + 2 d N (decoders) + 2 L d^2 (skip, if on)
    training = 3 * forward = 12 d N (+ 6 L d^2)

(backward twice the forward), the sum of its layers' transcoders, against the CLT's 3 (L + 3) d N.
"""

from dataclasses import dataclass

from pipeline.coders.clt import CLTConfig, CrossLayerTranscoder


@dataclass
class PLTConfig(CLTConfig):
    kind: str = "plt"  # this kind


class PerLayerTranscoders(CrossLayerTranscoder):
    kind = "plt"
    config_class = PLTConfig
    cross_layer = False
