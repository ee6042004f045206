# Derivations made non-reproducible on purpose, one known cause each, for
# nardiff's tests: each is built by two builders (two chroot stores) and
# the NARs must differ in the named file for the named reason. Each build sleeps a second so that two builds
# never share a timestamp. (The ELF case is built outside Nix: a chroot
# store builds in a chroot, where the host's compiler is not.)
{ busybox ? /usr/bin/busybox }:
let
  bb = builtins.path {
    name = "busybox";
    path = builtins.dirOf busybox;
    filter = p: t: baseNameOf p == baseNameOf busybox;
  };
  sh = "${bb}/${baseNameOf busybox}";
  mk = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = sh;
    args = [ "sh" "-c" ''
      set -e
      for c in mkdir echo date sleep head od tr ls shuf gzip mv cat touch mktemp tail printf; do
        ${sh} ln -s ${sh} ./$c
      done
      export PATH=$PWD:/usr/bin:/bin
      mkdir $out
      echo "stable" > $out/README
      sleep 1
      ${script}
    '' ];
  };
in
{
  # date(1) and an ISO timestamp written into a file.
  date = mk "unrepro-date" ''
    echo "version 1.0" > $out/info
    echo "built on $(date)" >> $out/info
    echo "stamp $(date -u +%Y-%m-%dT%H:%M:%S)" >> $out/info
  '';
  # A random identifier.
  random = mk "unrepro-random" ''
    echo "session=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" > $out/id
  '';
  # A few random bytes (a seed).
  seed = mk "unrepro-seed" ''
    head -c 16 /dev/urandom > $out/seed
  '';
  # A directory listing in directory order (shuffled, as a hashed file
  # system would give it).
  order = mk "unrepro-order" ''
    mkdir d
    for f in alpha beta gamma delta epsilon zeta eta theta iota kappa; do touch d/$f; done
    ls d | shuf > $out/listing
  '';
  # A temporary build directory leaks into a file (as a tool recording
  # where it worked would).
  buildpath = mk "unrepro-buildpath" ''
    d=$(mktemp -d)
    echo "srcdir = $d/src" > $out/config
  '';
  # A gzip whose header records the time, as GNU gzip does without -n
  # (busybox writes 0: the header is written here by hand).
  gzip = mk "unrepro-gzip" ''
    echo "manual page" > page.1
    m=$(date +%s)
    b() { printf "\\$(printf %03o $(( (m >> $1) & 255 )))"; }
    { printf '\037\213\010\000'; b 0; b 8; b 16; b 24; gzip -c page.1 | tail -c +9; } > $out/page.1.gz
  '';
}
