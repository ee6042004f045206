# A chain of n derivations, each output a file naming the previous one
# (so Nix records the reference): a synthetic closure of n paths for the
# closure-publishing benchmark.
{ busybox, message ? "chain", n ? 200 }:
let
  bb = builtins.path {
    name = "busybox";
    path = builtins.dirOf busybox;
    filter = p: t: baseNameOf p == baseNameOf busybox;
  };
  sh = "${bb}/${baseNameOf busybox}";
  mk = i: prev: derivation {
    name = "chain-${toString i}";
    system = builtins.currentSystem;
    builder = sh;
    inherit message;
    args = [ "sh" "-c" "printf '%s\\n' '${prev}' > $out" ];
  };
  go = i: if i == 0 then mk 0 "start" else mk i (go (i - 1));
in
go (n - 1)
