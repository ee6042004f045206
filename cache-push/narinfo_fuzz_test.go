package cachepush

import (
	"bytes"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo"

	"codeberg.org/provenix/provenix/internal/fuzzseed"
)

const seedNarinfo = `StorePath: /nix/store/pqxlcjhmikcyjjir05zmvq9gkcc899fb-provenix-hello
URL: nar/1jhzhzn1wm6gx5nlfb6mdf4kmwxvq4rwqvfdhwdbgl6r5ilv1vl3.nar.zst
Compression: zstd
FileHash: sha256:1jhzhzn1wm6gx5nlfb6mdf4kmwxvq4rwqvfdhwdbgl6r5ilv1vl3
FileSize: 512
NarHash: sha256:0mcy2z8jiqsg1fh1w8mmdk6bgylb3rm16gd9yf4jhaqzqcdshv0y
NarSize: 960
References: pqxlcjhmikcyjjir05zmvq9gkcc899fb-provenix-hello
Deriver: wxfarnqh16d1pszxvka95yml1nm7jvwj-provenix-hello.drv
Sig: test-cache-1:ZmFrZXNpZ25hdHVyZWZha2VzaWduYXR1cmVmYWtlc2lnbmF0dXJlZmFrZXNpZ25hdHVyZWZha2VzaWduYXR1cmU=
`

// narinfoSeeds are committed as FuzzNarinfo's corpus.
func narinfoSeeds() map[string][]byte {
	return map[string][]byte{
		"pushed":        []byte(seedNarinfo),
		"two-sigs":      []byte(seedNarinfo + "Sig: other-1:" + strings.Repeat("A", 86) + "==\n"),
		"ca-system":     []byte(seedNarinfo + "CA: fixed:r:sha256:1jhzhzn1wm6gx5nlfb6mdf4kmwxvq4rwqvfdhwdbgl6r5ilv1vl3\nSystem: x86_64-linux\n"),
		"sri-hash":      []byte(strings.Replace(seedNarinfo, "NarHash: sha256:0mcy2z8jiqsg1fh1w8mmdk6bgylb3rm16gd9yf4jhaqzqcdshv0y", "NarHash: sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", 1)),
		"no-narhash":    []byte("StorePath: /nix/store/x\nNarHash: sha256:\n"),
		"crlf":          []byte(strings.ReplaceAll(seedNarinfo, "\n", "\r\n")),
		"empty":         nil,
		"dup-storepath": []byte(seedNarinfo + "StorePath: /nix/store/00000000000000000000000000000000-x\n"),
	}
}

func TestFuzzCorpus(t *testing.T) {
	fuzzseed.Sync(t, "FuzzNarinfo", narinfoSeeds(), true)
}

// FuzzNarinfo parses hostile narinfos the way the pusher reads an entry
// already in the cache (and verify reads one from a cache): parse, take
// the NAR hash, add signatures, print and parse again. It must never panic,
// and what it prints must parse back to the same hash.
func FuzzNarinfo(f *testing.F) {
	// Seeds: testdata/fuzz/FuzzNarinfo/ (narinfoSeeds).
	f.Fuzz(func(t *testing.T, s string) {
		ni, err := narinfo.Parse(bytes.NewReader([]byte(s)))
		if err != nil {
			return
		}
		h, herr := narHashOf(ni)
		if herr != nil {
			// The pusher refuses such an entry (a conflict) before it
			// would print it; go-nix's String needs a NarHash.
			return
		}
		appendSigs(ni, []string{"builder-a-1:ZmFrZXNpZ25hdHVyZWZha2VzaWduYXR1cmVmYWtlc2lnbmF0dXJlZmFrZXNpZ25hdHVyZWZha2VzaWduYXR1cmU=", "garbage"}, nil)
		again, err := narinfo.Parse(bytes.NewReader([]byte(ni.String())))
		if err != nil {
			return // go-nix prints some parsed values it cannot read back; not ours to fix
		}
		if h2, err := narHashOf(again); err != nil || h2 != h {
			t.Fatalf("NAR hash changed across print/parse: %x → %x (%v)", h, h2, err)
		}
	})
}
