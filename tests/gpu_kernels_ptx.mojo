# Compile mwc's GPU kernels (attention, mel, pick; the experimental layer norm + linear) to PTX for an H100/H200
# (sm_90a) on a machine without a GPU, so a kernel change is type-checked and its code inspected before a GPU visit.
# Not a test of results: run the op checks on the GPU for that.
#
#   mojo run -I . -I tests tests/gpu_kernels_ptx.mojo          (from the repository root; ~15 s)
#
# Prints, per kernel instantiation, the PTX size, how many global and shared loads are 16-byte vectors, and local
# (spilled) loads and stores.

from max.gpu.host.compile import _compile_code
from max.gpu.host import get_gpu_target
from ops.attention import _attn_decode64_gpu_kernel, _attn_decode_gpu_kernel, _attn_gpu_kernel
from ops.mel import _mel_frames_kernel
from linear_op.linear import _ln_linear_gpu_kernel
from ops.pick import _pick_part_gpu_kernel, _pick_final_gpu_kernel


def report(name: String, asm: String):
    var v4 = asm.count("ld.global.v4")
    var all = asm.count("ld.global")
    var sh4 = asm.count("ld.shared.v4")
    var loc = asm.count("ld.local") + asm.count("st.local")
    print(name, ": ptx", asm.byte_length(), "bytes,", all, "global loads,", v4, "of them 16-byte vectors;", sh4,
          "16-byte shared loads;", loc, "local loads/stores")


def main() raises:
    comptime T = get_gpu_target["sm_90a"]()
    report("decode64 fp16 (cached, KV write)", _compile_code[_attn_decode64_gpu_kernel[DType.float16, True, 8, False, True], target=T]().asm)
    report("decode64 fp16 (split)", _compile_code[_attn_decode64_gpu_kernel[DType.float16, False, 4, True], target=T]().asm)
    report("decode64 fp32", _compile_code[_attn_decode64_gpu_kernel[DType.float32, False, 8, False], target=T]().asm)
    report("decode (any D) fp16", _compile_code[_attn_decode_gpu_kernel[DType.float16, False], target=T]().asm)
    report("tiles fp16 causal", _compile_code[_attn_gpu_kernel[DType.float16, True, False], target=T]().asm)
    report("ln_linear fp32 -> fp16", _compile_code[_ln_linear_gpu_kernel[DType.float32, DType.float16, DType.float16, False, 384], target=T]().asm)
    report("ln_linear fp32 -> fp16 gelu", _compile_code[_ln_linear_gpu_kernel[DType.float32, DType.float16, DType.float16, True, 384], target=T]().asm)
    report("ln_linear fp32 -> fp32 (logits)", _compile_code[_ln_linear_gpu_kernel[DType.float32, DType.float16, DType.float32, False, 384], target=T]().asm)
    report("ln_linear large (1280) -> fp32", _compile_code[_ln_linear_gpu_kernel[DType.float32, DType.float16, DType.float32, False, 1280], target=T]().asm)
    report("pick part", _compile_code[_pick_part_gpu_kernel, target=T]().asm)
    report("pick final", _compile_code[_pick_final_gpu_kernel, target=T]().asm)
    report("mel frames", _compile_code[_mel_frames_kernel, target=T]().asm)
