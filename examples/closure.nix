# A self-contained dependency chain, the smallest that has every shape a
# real package closure has (no nixpkgs, no network):
#
#   top ──▶ left ──▶ multi-b.dev ──▶ multi-b.out ──▶ dep-a ──▶ busybox (source)
#     └───▶ right ─────────────────────────┘ └──▶ fixed (fixed-output)
#                                                  greeting (builtins.toFile)
#
# - busybox: a source path (builtins.path), content-addressed "fixed:r:sha256"
# - greeting: builtins.toFile, content-addressed "text:sha256"
# - fixed: a fixed-output derivation (outputHash, flat), "fixed:sha256"
# - multi-b: two outputs, dev refers to out
# - left and right both reach multi-b: a diamond under top
# Every output is a runnable or readable file that names its references, so
# Nix records them. `top` runs with nothing but its closure:
#   chroot STORE_ROOT /nix/store/…-closure-top/bin/top
# Pass a resolved static busybox: `--arg busybox /usr/bin/busybox`, and a
# `--argstr message …` of your own to get paths nobody built before.
{ busybox ? /usr/bin/busybox, message ? "closure" }:
let
  bb = builtins.path {
    name = "busybox";
    path = builtins.dirOf busybox;
    filter = p: t: baseNameOf p == baseNameOf busybox;
  };
  sh = "${bb}/${baseNameOf busybox}";
  greeting = builtins.toFile "greeting.txt" "greetings from a closure\n";
  mk = name: script: attrs: derivation ({
    inherit name message;
    system = builtins.currentSystem;
    builder = sh;
    args = [ "sh" "-c" ("set -e\n" + script) ];
  } // attrs);
in
rec {
  fixed = mk "closure-fixed" ''
    printf 'provenix fixed output\n' > $out
  '' {
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = "152ccda7c7bfacbe18258c91a3c58d8b76d71817da347980e3a039e15484c0b4";
    message = "fixed";
  };

  dep-a = mk "closure-dep-a" ''
    mkdir -p $out/bin
    printf '#!%s sh\necho "dep-a: %s"\n' "${sh}" "$message" > $out/bin/dep-a
    chmod +x $out/bin/dep-a
  '' { };

  multi-b = mk "closure-multi-b" ''
    mkdir -p $out/lib $dev/include
    printf 'multi-b uses %s\n' "${dep-a}/bin/dep-a" > $out/lib/multi-b
    printf 'headers of %s\n' "$out" > $dev/include/multi-b.h
  '' { outputs = [ "out" "dev" ]; };

  left = mk "closure-left" ''
    mkdir -p $out
    printf 'left sees %s\n' "${multi-b.dev}" > $out/left
  '' { };

  right = mk "closure-right" ''
    mkdir -p $out
    printf 'right sees %s and %s and %s\n' "${multi-b.out}" "${fixed}" "${greeting}" > $out/right
  '' { };

  top = mk "closure-top" ''
    mkdir -p $out/bin
    {
      printf '#!%s sh\n' "${sh}"
      printf '%s cat %s/left %s/right %s %s %s\n' "${sh}" "${left}" "${right}" "${fixed}" "${greeting}" "${multi-b.dev}/include/multi-b.h"
      printf '%s\n' "${dep-a}/bin/dep-a"
      printf 'echo "top: %s"\n' "$message"
    } > $out/bin/top
    chmod +x $out/bin/top
  '' { };
}
