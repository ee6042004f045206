# A sample whose NAR spans many chunks of a chunked cache: the busybox of
# examples/hello.nix copied a few times (identical files: chunks the NAR
# shares with itself) and pseudo-random bytes (chunks of their own). No
# nixpkgs, no network.
{ busybox, message }:
let
  hello = (import ../../../examples/hello.nix { inherit busybox message; }).hello;
in
{
  big = derivation {
    name = "provenix-big";
    system = builtins.currentSystem;
    builder = hello.builder;
    args = [ "sh" "-c" ''
      set -e
      mkdir -p $out/bin $out/share
      printf '%s\n' "$message" > $out/share/message
      for i in 1 2 3; do cp ${hello.builder} $out/bin/bb$i; done
      ${hello.builder} head -c 3000000 /dev/urandom > $out/share/noise
    '' ];
    inherit message;
  };
}
