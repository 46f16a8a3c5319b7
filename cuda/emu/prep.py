#!/usr/bin/env python3
"""cuda/emu/prep.py MODULE.cu OUT.cpp: a module as the host assembles it (KVSPARSE_DUMP_PTX),
rewritten for the host emulation in emu.h.

- `__shared__` storage becomes `static` (one CTA runs at a time), `extern __shared__` arrays
  become references to buffers emu.h's driver defines (`emu_dynamic_smem`);
- every `__device__ __forceinline__` helper whose body holds inline PTX gets the body of the
  same name from EMULATED (the emu_* functions), or, where there is none, a body that aborts (the
  kernel that reaches it is not one the emulation covers);
- `extern "C" __global__` kernels stay callable functions.
"""
import re
import sys

EMULATED = {
    "kvs_h2f": "{ return emu_h2f(h); }",
    "kvs_f2h": "{ return emu_f2h(f); }",
    "kvs_smem_addr": "{ return (u32)(uintptr_t)p; }",
    "ldg16": "{ kvs_u4 r; std::memcpy(&r, ptr, 16); return r; }",
    "ldg16_stream": "{ kvs_u4 r; std::memcpy(&r, ptr, 16); return r; }",
    "kvs_policy_evict_first": "{ return 0; }",
    "kvs_exp2": "{ return emu_exp2(x); }",
    "kvs_pack2": "{ return emu_pack2(lo, hi, EMU_BF16); }",
    "kvs_mma16816": "{ emu_mma16816(c, a, b0, b1, EMU_BF16); }",
    "kvs_ldsm_x2_trans": "{ u32 r[2]; emu_ldmatrix(r, 2, true, smem_row); r0 = r[0]; r1 = r[1]; }",
    "kvs_ldsm_x4_trans": "{ emu_ldmatrix(r, 4, true, smem_row); }",
    "kvs_ldsm_x4": "{ emu_ldmatrix(r, 4, false, smem_row); }",
    "kvs_cp_async16": "{ emu_cp_async(smem, gmem, src_bytes); }",
    "kvs_cp_async_wait_all": "{ emu_cp_async_wait(); }",
    # Kernels run one after another here: there is no earlier grid to wait for.
    "kvs_grid_dependency": "{}",
}


def body_end(src, open_brace):
    depth = 0
    for i in range(open_brace, len(src)):
        if src[i] == "{":
            depth += 1
        elif src[i] == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError("unbalanced braces")


def rewrite_helpers(src):
    out, pos = [], 0
    head = re.compile(r"__device__ __forceinline__ [^;{]*?\b(\w+)\s*\(")
    while True:
        m = head.search(src, pos)
        if not m:
            out.append(src[pos:])
            return "".join(out)
        # The signature ends at the first '{' after the balanced parameter list.
        depth, i = 0, m.end() - 1
        while True:
            if src[i] == "(":
                depth += 1
            elif src[i] == ")":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        brace = src.index("{", i)
        if ";" in src[i:brace]:  # a declaration, not a definition
            out.append(src[pos : i + 1])
            pos = i + 1
            continue
        end = body_end(src, brace)
        name, body = m.group(1), src[brace:end]
        out.append(src[pos:brace])
        if name in EMULATED:
            out.append(EMULATED[name])
        elif re.search(r"\basm\b", body):
            out.append('{ emu_fail("%s: inline PTX not emulated"); }' % name)
        else:
            out.append(body)
        pos = end


def main():
    src = open(sys.argv[1]).read()
    bf16 = "#define KVS_STORE_BF16 1" in src
    src = re.sub(r"\bextern\s+__shared__\s+(__attribute__\(\(aligned\(\d+\)\)\)\s+)?([\w ]+?)\s+(\w+)\[\];",
                 r"\2* const \3 = reinterpret_cast<\2*>(emu_dynamic_smem);", src)
    src = re.sub(r"\b__shared__\b", "static", src)
    src = rewrite_helpers(src)
    # Anything left with inline PTX outside the helpers (kernels' own asm) cannot be emulated.
    for m in re.finditer(r"\basm\b", src):
        line = src.count("\n", 0, m.start()) + 1
        ctx = src[max(0, m.start() - 200) : m.start()]
        if "emu_fail" not in ctx:
            sys.exit(f"prep.py: inline PTX left at line {line} of the rewritten module")
    src = src.replace('extern "C"', "")
    with open(sys.argv[2], "w") as f:
        f.write('#include "emu.h"\n')
        f.write("alignas(16) inline unsigned char emu_dynamic_smem[232448];\n")
        f.write(f"#define EMU_BF16 {'true' if bf16 else 'false'}\n")  # else f16 (or f32 storage)
        f.write(src)


if __name__ == "__main__":
    main()
