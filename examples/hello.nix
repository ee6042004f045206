# A self-contained sample derivation: no nixpkgs, no network. Its builder is
# a static busybox that `provenix demo` passes in as a directory (a bare
# busybox file as builder fails: busybox reads its applet name from argv[0],
# which Nix sets to the store path). Pass the resolved path of a static
# busybox (not a symlink to it): `--arg busybox /usr/bin/busybox`.
{ busybox ? /usr/bin/busybox, message ? "Hello from a Provenix-attested build" }:
let
  bb = builtins.path {
    name = "busybox";
    path = builtins.dirOf busybox;
    filter = p: t: baseNameOf p == baseNameOf busybox;
  };
in
{
  hello = derivation {
    name = "provenix-hello";
    system = builtins.currentSystem;
    builder = "${bb}/${baseNameOf busybox}";
    args = [ "sh" "-c" ''
      set -e
      mkdir -p $out/bin $out/share
      printf '%s\n' "$message" > $out/share/message
      printf '#!/bin/sh\ncat %s/share/message\n' "$out" > $out/bin/hello
      chmod +x $out/bin/hello
    '' ];
    inherit message;
  };
}
