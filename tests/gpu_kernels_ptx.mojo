# Compile mwc's GPU kernels (attention, mel) to PTX for an H100/H200 (sm_90a) on a machine without a GPU, so a kernel
# change is type-checked and its code inspected before a GPU visit. Not a test of results: run the op checks on the
# GPU for that.
#
#   mojo run -I . tests/gpu_kernels_ptx.mojo          (from the repository root; ~15 s)
#
# Prints, per kernel instantiation, the PTX size and how many global and shared loads are 16-byte vectors.

from max.gpu.host.compile import _compile_code
from max.gpu.host import get_gpu_target
from ops.attention import _attn_decode64_gpu_kernel, _attn_decode_gpu_kernel, _attn_gpu_kernel
from ops.mel import _mel_frames_kernel


def report(name: String, asm: String):
    var v4 = asm.count("ld.global.v4")
    var all = asm.count("ld.global")
    var sh4 = asm.count("ld.shared.v4")
    print(name, ": ptx", asm.byte_length(), "bytes,", all, "global loads,", v4, "of them 16-byte vectors;", sh4,
          "16-byte shared loads")


def main() raises:
    comptime T = get_gpu_target["sm_90a"]()
    report("decode64 fp16 (cached)", _compile_code[_attn_decode64_gpu_kernel[DType.float16, True], target=T]().asm)
    report("decode64 bf16", _compile_code[_attn_decode64_gpu_kernel[DType.bfloat16, False], target=T]().asm)
    report("decode64 fp32", _compile_code[_attn_decode64_gpu_kernel[DType.float32, False], target=T]().asm)
    report("decode (any D) fp16", _compile_code[_attn_decode_gpu_kernel[DType.float16, False], target=T]().asm)
    report("tiles fp16 causal", _compile_code[_attn_gpu_kernel[DType.float16, True, False], target=T]().asm)
    report("mel frames", _compile_code[_mel_frames_kernel, target=T]().asm)
