#!/usr/bin/env python3
"""Extracts aes_gcm_rfc4106_tv_template and aes_gcm_rfc4543_tv_template from the Linux
kernel's crypto/testmgr.h into testmgr_gcm.txt (hex, one field per line).

Usage: extract_testmgr.py PATH/TO/crypto/testmgr.h "SOURCE DESCRIPTION" > testmgr_gcm.txt
"""
import re
import sys

FIELDS = ("key", "iv", "ptext", "assoc", "ctext")
LENS = {"key": "klen", "ptext": "plen", "assoc": "alen", "ctext": "clen"}


def c_bytes(expr):
    """Concatenated C string literals with \\x escapes (and plain chars) -> bytes."""
    out = bytearray()
    for lit in re.findall(r'"((?:[^"\\]|\\.)*)"', expr):
        i = 0
        while i < len(lit):
            if lit[i] == "\\" and lit[i + 1] == "x":
                out.append(int(lit[i + 2 : i + 4], 16))
                i += 4
            elif lit[i] == "\\":
                raise ValueError("unsupported escape in " + lit)
            else:
                out.append(ord(lit[i]))
                i += 1
    return bytes(out)


def template(text, name):
    start = text.index("static const struct aead_testvec %s[] = {" % name)
    end = text.index("\n};", start)
    body = text[start:end]
    # Split on the vector braces: each vector is "{ ... }" at depth 1.
    vecs, depth, cur = [], 0, None
    for ch in body[body.index("{") + 1 :]:
        if ch == "{":
            depth += 1
            if depth == 1:
                cur = []
                continue
        elif ch == "}":
            depth -= 1
            if depth == 0:
                vecs.append("".join(cur))
                cur = None
                continue
        if cur is not None:
            cur.append(ch)
    return vecs


def parse_vec(src):
    comment = re.match(r"\s*/\*(.*?)\*/", src)
    fields = {}
    for m in re.finditer(r"\.(\w+)\s*=\s*(.*?)(?=,\s*(?:\.\w+\s*=|$))", src, re.S):
        fields[m.group(1)] = m.group(2).strip()
    v = {"comment": comment.group(1).strip() if comment else ""}
    nums = {k: int(fields[k], 0) for k in ("klen", "plen", "clen", "alen") if k in fields}
    for f in FIELDS:
        expr = fields[f]
        if f == "iv":
            n = 8
        else:
            n = nums[LENS[f]]
        b = bytes(48) if expr == "zeroed_string" else c_bytes(expr)
        if len(b) < n:
            raise ValueError("field %s shorter than its length" % f)
        v[f] = b[:n]
    v["novrfy"] = int(fields.get("novrfy", "0"), 0)
    return v


def main():
    text = open(sys.argv[1]).read()
    print("# Known-answer vectors for rfc4106(gcm(aes)) and rfc4543(gcm(aes)), copied from")
    print("# %s," % sys.argv[2])
    print("# crypto/testmgr.h, by extract_testmgr.py. Kernel conventions: key = AES key || 4-byte")
    print("# salt; assoc = ESP header (SPI | seq, or SPI | seq-hi | seq-lo with ESN) || 8-byte IV;")
    print("# ctext = ciphertext || 16-byte tag; novrfy = 1: the tag must not verify.")
    for name in ("aes_gcm_rfc4106_tv_template", "aes_gcm_rfc4543_tv_template"):
        for i, src in enumerate(template(text, name)):
            v = parse_vec(src)
            print()
            print(("[%s %d] %s" % (name, i, v["comment"])).rstrip())
            for f in FIELDS:
                print("%s = %s" % (f, v[f].hex()))
            print("novrfy = %d" % v["novrfy"])


main()
