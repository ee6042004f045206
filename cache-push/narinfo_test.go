package cachepush

import (
	"crypto/sha256"
	"path/filepath"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/ingest"
)

// TestNarinfoText: the narinfo the pusher writes is what go-nix's String
// prints, byte for byte, whichever fields it has (FuzzNarinfo compares
// them on hostile narinfos too).
func TestNarinfoText(t *testing.T) {
	dir := t.TempDir()
	if _, err := GenerateKeyFiles("test-cache-1", filepath.Join(dir, "cache")); err != nil {
		t.Fatal(err)
	}
	key, err := LoadKey(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	out := attest.Output{Name: "out", Path: storePath("hello"), NarHash: sha256.Sum256([]byte("nar")), NarSize: 1234,
		References: []string{storePath("hello"), storePath("glibc")}}
	src := out
	src.References = nil
	nar := ingest.Result{URL: "nar/x.nar.zst", FileHash: sha256.Sum256([]byte("file")), FileSize: 567, NarHash: out.NarHash, NarSize: out.NarSize}
	noSize := nar
	noSize.FileSize = 0
	ca := "fixed:r:sha256:1jhzhzn1wm6gx5nlfb6mdf4kmwxvq4rwqvfdhwdbgl6r5ilv1vl3"
	cases := map[string]struct {
		out     attest.Output
		deriver string
		nar     ingest.Result
		ca      string
		more    func(*narinfo.NarInfo)
	}{
		"output":       {out: out, deriver: storePath("hello.drv"), nar: nar},
		"source":       {out: src, nar: nar, ca: ca},
		"no file size": {out: out, nar: noSize},
		"builder sigs and a system": {out: out, deriver: storePath("hello.drv"), nar: nar, ca: ca, more: func(ni *narinfo.NarInfo) {
			ni.System = "x86_64-linux"
			ni.Signatures = append(ni.Signatures, signature.Signature{Name: "builder-a-1", Data: []byte("0123456789")}, signature.Signature{Name: "b"})
		}},
	}
	for what, c := range cases {
		ni, err := newNarinfo(c.out, c.deriver, c.nar, key, c.ca)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if c.more != nil {
			c.more(ni)
		}
		if got, want := narinfoText(ni), ni.String(); got != want {
			t.Errorf("%s: narinfoText wrote\n%s\nString writes\n%s", what, got, want)
		}
	}
}
