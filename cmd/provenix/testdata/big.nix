# A sample whose NAR spans many chunks of a chunked cache: busybox copied
# a few times (identical files: chunks the NAR shares with itself) and
# pseudo-random bytes (chunks of their own). No nixpkgs, no network.
{ busybox, message }:
let
  bb = builtins.path {
    name = "busybox";
    path = builtins.dirOf busybox;
    filter = p: t: baseNameOf p == baseNameOf busybox;
  };
in
{
  big = derivation {
    name = "provenix-big";
    system = builtins.currentSystem;
    builder = "${bb}/${baseNameOf busybox}";
    args = [ "sh" "-c" ''
      set -e
      mkdir -p $out/bin $out/share
      printf '%s\n' "$message" > $out/share/message
      for i in 1 2 3; do cp ${bb}/${baseNameOf busybox} $out/bin/bb$i; done
      ${bb}/${baseNameOf busybox} head -c 3000000 /dev/urandom > $out/share/noise
    '' ];
    inherit message;
  };
}
