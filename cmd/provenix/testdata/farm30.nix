# The farm's acceptance graph (TestFarmAccept): 30 derivations built with
# busybox only, so a host fakes a second system with extra-platforms:
#   - a chain of 15 (chain-01 <- chain-02 <- ... <- chain-15);
#   - a diamond on x86_64-linux over chain-03, and one labelled
#     aarch64-linux (built by busybox, so x86_64 builds it when its Nix
#     lists aarch64-linux in extra-platforms);
#   - three aarch64-linux leaves, a slow leaf (a volunteer is killed
#     while it builds), two derivations mixing the systems, and the top.
# Every output names its derivation, the salt and its inputs' outputs,
# and whatever a builder's sandbox holds at /provenix-liar: an honest
# volunteer has nothing there, the liar is given a file (Nix's
# extra-sandbox-paths), so its NARs differ from everyone else's.
{ busybox ? /usr/bin/busybox, salt ? "", leafVersion ? "1", slowSeconds ? "0" }:
let
  bb = builtins.path {
    name = "busybox";
    path = builtins.dirOf busybox;
    filter = p: t: baseNameOf p == baseNameOf busybox;
  };
  mk = { name, inputs ? [ ], system ? "x86_64-linux", extra ? "" }: derivation {
    name = "fa-" + name;
    inherit system salt inputs;
    builder = "${bb}/${baseNameOf busybox}";
    args = [ "sh" "-c" ''
      ${extra}
      { echo $name $salt; for i in $inputs; do cat $i; done; cat /provenix-liar 2>/dev/null; true; } > $out
    '' ];
  };
  arm = "aarch64-linux";
  pad = i: if i < 10 then "0${toString i}" else toString i;
  # chain-01 is the leaf a mass rebuild upgrades (leafVersion).
  chainAt = i: mk {
    name = "chain-${pad i}";
    inputs = if i == 1 then [ ] else [ (chainAt (i - 1)) ];
    extra = if i == 1 then "# version ${leafVersion}" else "";
  };
  self = rec {
    chain-01 = chainAt 1;
    chain-03 = chainAt 3;
    chain-15 = chainAt 15;
    dia-base = mk { name = "dia-base"; inputs = [ chain-03 ]; };
    dia-left = mk { name = "dia-left"; inputs = [ dia-base ]; };
    dia-right = mk { name = "dia-right"; inputs = [ dia-base ]; };
    dia-join = mk { name = "dia-join"; inputs = [ dia-left dia-right ]; };
    arm-dia-base = mk { name = "arm-dia-base"; system = arm; };
    arm-dia-left = mk { name = "arm-dia-left"; system = arm; inputs = [ arm-dia-base ]; };
    arm-dia-right = mk { name = "arm-dia-right"; system = arm; inputs = [ arm-dia-base ]; };
    arm-dia-join = mk { name = "arm-dia-join"; system = arm; inputs = [ arm-dia-left arm-dia-right ]; };
    arm-1 = mk { name = "arm-1"; system = arm; };
    arm-2 = mk { name = "arm-2"; system = arm; };
    arm-3 = mk { name = "arm-3"; system = arm; };
    slow = mk { name = "slow"; extra = "sleep ${slowSeconds}"; };
    mix-1 = mk { name = "mix-1"; inputs = [ arm-1 dia-join ]; };
    mix-2 = mk { name = "mix-2"; system = arm; inputs = [ chain-15 mix-1 arm-2 ]; };
    top = mk { name = "top"; inputs = [ mix-2 arm-dia-join arm-3 slow ]; };
  };
in
self
