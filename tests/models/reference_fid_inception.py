"""PyTorch reference: pytorch-fid 0.3.0's FID Inception-v3, transcribed without torchvision or pytorch-fid.

A line-for-line transcription of torchvision's `Inception3(num_classes=1008, aux_logits=False)` with the blocks
pytorch-fid swaps in (`FIDInceptionA`, `FIDInceptionC`, `FIDInceptionE_1`, `FIDInceptionE_2`) and of
`InceptionV3(output_blocks=[3], resize_input=True, normalize_input=False)`'s forward: bilinear resize to
299x299 (align_corners=False), no input scaling (inputs already in [-1, 1]), the four blocks, adaptive average
pool. Module names equal the originals, so `state_dict()` has the published file's keys (fc included).
pytorch-fid itself is not imported: its torchvision dependency would pull a CUDA torch into CI.
"""

import torch
import torch.nn.functional as F
from torch import nn


class BasicConv2d(nn.Module):
  def __init__(self, in_channels, out_channels, **kwargs):
    super().__init__()
    self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
    self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)), inplace=True)


class FIDInceptionA(nn.Module):
  def __init__(self, in_channels, pool_features):
    super().__init__()
    self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
    self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
    self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
    self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
    self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

  def forward(self, x):
    branch1x1 = self.branch1x1(x)
    branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
    branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    branch_pool = self.branch_pool(branch_pool)
    return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
  def __init__(self, in_channels):
    super().__init__()
    self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
    self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

  def forward(self, x):
    branch3x3 = self.branch3x3(x)
    branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
    return torch.cat([branch3x3, branch3x3dbl, branch_pool], 1)


class FIDInceptionC(nn.Module):
  def __init__(self, in_channels, channels_7x7):
    super().__init__()
    c7 = channels_7x7
    self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
    self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
    self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

  def forward(self, x):
    branch1x1 = self.branch1x1(x)
    branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    branch7x7dbl = self.branch7x7dbl_1(x)
    branch7x7dbl = self.branch7x7dbl_2(branch7x7dbl)
    branch7x7dbl = self.branch7x7dbl_3(branch7x7dbl)
    branch7x7dbl = self.branch7x7dbl_4(branch7x7dbl)
    branch7x7dbl = self.branch7x7dbl_5(branch7x7dbl)
    branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    branch_pool = self.branch_pool(branch_pool)
    return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
  def __init__(self, in_channels):
    super().__init__()
    self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
    self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
    self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
    self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

  def forward(self, x):
    branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
    branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
    return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)


class FIDInceptionE(nn.Module):
  """`max_pool=False`: FIDInceptionE_1 (Mixed_7b); `max_pool=True`: FIDInceptionE_2 (Mixed_7c)."""

  def __init__(self, in_channels, max_pool):
    super().__init__()
    self.max_pool = max_pool
    self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
    self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
    self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

  def forward(self, x):
    branch1x1 = self.branch1x1(x)
    branch3x3 = self.branch3x3_1(x)
    branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
    branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
    if self.max_pool:
      branch_pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    else:
      branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    branch_pool = self.branch_pool(branch_pool)
    return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)


class FIDInceptionV3(nn.Module):
  """images [B, 3, H, W] in [-1, 1] -> pool3 [B, 2048, 1, 1], as pytorch-fid's block-3 output."""

  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
    self.Mixed_5b = FIDInceptionA(192, pool_features=32)
    self.Mixed_5c = FIDInceptionA(256, pool_features=64)
    self.Mixed_5d = FIDInceptionA(288, pool_features=64)
    self.Mixed_6a = InceptionB(288)
    self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    self.Mixed_7a = InceptionD(768)
    self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
    self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
    self.fc = nn.Linear(2048, 1008)  # in the published state dict; unused by the pool3 features

  def forward(self, x):
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    x = self.Conv2d_1a_3x3(x)
    x = self.Conv2d_2a_3x3(x)
    x = self.Conv2d_2b_3x3(x)
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    x = self.Conv2d_3b_1x1(x)
    x = self.Conv2d_4a_3x3(x)
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    for name in (
      "Mixed_5b",
      "Mixed_5c",
      "Mixed_5d",
      "Mixed_6a",
      "Mixed_6b",
      "Mixed_6c",
      "Mixed_6d",
      "Mixed_6e",
      "Mixed_7a",
      "Mixed_7b",
      "Mixed_7c",
    ):
      x = getattr(self, name)(x)
    return F.adaptive_avg_pool2d(x, (1, 1))


def randomize(model: nn.Module, seed: int) -> nn.Module:
  """Random conv weights (He scale) and random BatchNorm affine and running statistics, in eval mode.

  The running statistics are not those of the activations, so BatchNorm's use of them is tested; the scales
  keep activations O(1) through the 94 convs.
  """
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.Conv2d):
        m.weight.normal_(0.0, (2.0 / m.weight[0].numel()) ** 0.5, generator=g)
      elif isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5, generator=g)
        m.bias.normal_(0.0, 0.2, generator=g)
        m.running_mean.normal_(0.0, 0.2, generator=g)
        m.running_var.uniform_(0.5, 1.5, generator=g)
        m.num_batches_tracked.fill_(1000)
      elif isinstance(m, nn.Linear):
        m.weight.normal_(0.0, 0.01, generator=g)
        m.bias.normal_(0.0, 0.01, generator=g)
  return model.eval()
