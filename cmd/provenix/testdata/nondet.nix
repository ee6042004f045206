# A deliberately non-reproducible derivation: every build writes the time
# and random bytes, so independent builders never agree on its NAR.
{ busybox ? /usr/bin/busybox, name ? "nondet", salt ? "" }:
let
  bb = builtins.path {
    name = "busybox";
    path = builtins.dirOf busybox;
    filter = p: t: baseNameOf p == baseNameOf busybox;
  };
in
{
  nondet = derivation {
    inherit name salt;
    system = builtins.currentSystem;
    builder = "${bb}/${baseNameOf busybox}";
    args = [ "sh" "-c" "date +%s%N > $out; head -c 32 /dev/urandom | od -x >> $out" ];
  };
}
