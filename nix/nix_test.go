package nix

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testnix"
)

func TestParseDumpDB(t *testing.T) {
	const good = "/nix/store/aaa-x.drv\n6151b5b4811c942339390ce04c91ab71517f7d807efdf90ca41926c339ec1558\n784\n\n1\n/nix/store/bbb-busybox\n" +
		"/nix/store/ccc-out\nsha256:0f1rrh5z8q1bcz9p3p0w8n3ncjmwz7xy5iw4ygszyqajdnn5p0yh\n960\n/nix/store/aaa-x.drv\n0\n"
	tests := []struct {
		name, in, wantErr string
		paths             int
	}{
		{"two records", good, "", 2},
		{"empty", "", "", 0},
		{"truncated", "/nix/store/aaa-x\nabc\n", "truncated", 0},
		{"bad hash", "/nix/store/aaa-x\nnothex\n1\n\n0\n", "not a sha256", 0},
		{"bad size", "/nix/store/aaa-x\n6151b5b4811c942339390ce04c91ab71517f7d807efdf90ca41926c339ec1558\nbig\n\n0\n", "NAR size", 0},
		{"refs past the end", "/nix/store/aaa-x\n6151b5b4811c942339390ce04c91ab71517f7d807efdf90ca41926c339ec1558\n1\n\n9\n/nix/store/r\n", "reference count", 0},
		{"negative refs", "/nix/store/aaa-x\n6151b5b4811c942339390ce04c91ab71517f7d807efdf90ca41926c339ec1558\n1\n\n-1\n", "reference count", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseDumpDB([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || len(got) != tc.paths {
				t.Fatalf("got %d paths, err %v", len(got), err)
			}
		})
	}
	got, _ := parseDumpDB([]byte(good))
	drv := got["/nix/store/aaa-x.drv"]
	if drv.NarSize != 784 || len(drv.References) != 1 || drv.References[0] != "/nix/store/bbb-busybox" || drv.Deriver != "" {
		t.Fatalf("drv record: %+v", drv)
	}
	if out := got["/nix/store/ccc-out"]; out.Deriver != "/nix/store/aaa-x.drv" || out.NarSize != 960 {
		t.Fatalf("out record: %+v", out)
	}
}

func TestArgs(t *testing.T) {
	n := &Nix{Root: "/tmp/s", Options: map[string]string{"b": "2", "a": "1"}}
	got := strings.Join(n.args("x"), " ")
	if want := "--store /tmp/s --option a 1 --option b 2 x"; got != want {
		t.Fatalf("args = %q, want %q", got, want)
	}
	if n.RealPath("/nix/store/p") != "/tmp/s/nix/store/p" || (&Nix{}).RealPath("/nix/store/p") != "/nix/store/p" {
		t.Fatal("RealPath")
	}
}

// TestRealNix instantiates, realises and dumps a real derivation in a
// chroot store, and checks DumpNAR against nix-store --dump and against a
// wrong registration.
func TestRealNix(t *testing.T) {
	bb := testnix.Busybox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts := OfflineOptions()
	opts["sandbox"] = "false" // a chroot store as root cannot sandbox everywhere
	n := &Nix{Root: t.TempDir(), Options: opts}
	if v, err := n.Version(ctx); err != nil || v.Major != 2 {
		t.Fatalf("Version = %q, %v", v, err)
	}
	drvs, err := n.Instantiate(ctx, "../examples/hello.nix", "hello", map[string]string{"busybox": bb}, map[string]string{"message": t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	outs, err := n.Realise(ctx, drvs[0])
	if err != nil || len(outs) != 1 {
		t.Fatalf("Realise = %v, %v", outs, err)
	}
	d, err := n.ReadDerivation(drvs[0])
	if err != nil || d.Outputs["out"].Path != outs[0] {
		t.Fatalf("ReadDerivation: %v", err)
	}
	infos, err := n.PathInfo(ctx, outs[0], drvs[0])
	if err != nil {
		t.Fatal(err)
	}
	if infos[1].Path != drvs[0] || infos[0].Deriver != drvs[0] {
		t.Fatalf("PathInfo must answer for the .drv itself: %+v", infos)
	}
	h := sha256.New()
	if err := n.DumpNAR(h, infos[0]); err != nil {
		t.Fatal(err)
	}
	ref, err := exec.CommandContext(ctx, "nix-store", "--dump", n.RealPath(outs[0])).Output()
	if err != nil {
		var ee *exec.ExitError
		errors.As(err, &ee)
		t.Fatalf("nix-store --dump: %v\n%s", err, ee.Stderr)
	}
	if sha256.Sum256(ref) != infos[0].NarHash {
		t.Fatal("registered NAR hash differs from nix-store --dump")
	}
	if sum, size, err := HashNAR(n.RealPath(outs[0])); err != nil || sum != infos[0].NarHash || size != infos[0].NarSize {
		t.Fatalf("HashNAR = %x, %d, %v; registered %x, %d", sum, size, err, infos[0].NarHash, infos[0].NarSize)
	}
	wrong := infos[0]
	wrong.NarHash[0] ^= 1
	if err := n.DumpNAR(io.Discard, wrong); !errors.Is(err, ErrNarMismatch) {
		t.Fatalf("DumpNAR against a wrong registration: %v", err)
	}
	if _, err := n.PathInfo(ctx, "/nix/store/00000000000000000000000000000000-missing"); err == nil {
		t.Fatal("PathInfo of a missing path succeeded")
	}
	if _, err := os.Stat(n.RealPath(outs[0])); err != nil {
		t.Fatal(err)
	}
}
