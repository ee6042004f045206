package cachelayout

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestKeys(t *testing.T) {
	const p = "/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-busybox"
	for got, want := range map[string]string{
		NarinfoKey(p): "8hzbz17vcmw97w1wpqpadxhfkj7crcps.narinfo",
		NarinfoKey("8hzbz17vcmw97w1wpqpadxhfkj7crcps-busybox"): "8hzbz17vcmw97w1wpqpadxhfkj7crcps.narinfo",
		ProvenanceKey(p): "8hzbz17vcmw97w1wpqpadxhfkj7crcps.provenance.json",
		NARKey("1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"): "nar/1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s.nar.zst",
		CacheInfo(0):  "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n",
		CacheInfo(10): "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 10\n",
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
	if s := NARSuffixes(); s[0] != NARSuffix || !strings.HasSuffix(NARKey("x"), s[0]) {
		t.Errorf("NARSuffixes %v does not start with what NARKey writes", s)
	}
}

// sidecar is a sidecar as docs/cache-layout.md shows it and as the pusher
// writes it (json.MarshalIndent with two spaces): the format must not
// change under readers of existing caches.
const sidecar = `{
  "version": 1,
  "storePath": "/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-busybox",
  "narSha256": "a4942e84b6b3cbbc3fbd1b8fbc6b6c5f6d2b1b4f4e4b0c1b7d1d4e4b0c1bd10b",
  "bundles": [
    {
      "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"
    }
  ],
  "quorum": {
    "verdict": "trusted-only",
    "min": 2,
    "distinct": "owner",
    "agreeing": [
      "builder-a"
    ],
    "unverifiedByQuorum": true
  }
}`

func TestProvenanceRoundTrip(t *testing.T) {
	p, err := ParseProvenance([]byte(sidecar))
	if err != nil {
		t.Fatal(err)
	}
	if p.Quorum == nil || !p.Quorum.UnverifiedByQuorum || p.Quorum.Agreeing[0] != "builder-a" || len(p.Bundles) != 1 {
		t.Fatalf("parsed %+v", p)
	}
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil || string(b) != sidecar {
		t.Fatalf("written back as\n%s\n%v", b, err)
	}
	// Without a quorum the field is left out.
	p.Quorum = nil
	if b, _ := json.Marshal(p); strings.Contains(string(b), "quorum") {
		t.Fatalf("%s", b)
	}
}

func TestParseProvenanceRefuses(t *testing.T) {
	good := `"storePath":"/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-busybox","narSha256":"` + strings.Repeat("ab", 32) + `"`
	for what, s := range map[string]string{
		"not JSON":      "{",
		"version 2":     `{"version":2,` + good + `,"bundles":[{}]}`,
		"no version":    `{` + good + `,"bundles":[{}]}`,
		"no bundles":    `{"version":1,` + good + `,"bundles":[]}`,
		"upper-case":    `{"version":1,"narSha256":"` + strings.Repeat("AB", 32) + `","bundles":[{}]}`,
		"short digest":  `{"version":1,"narSha256":"abcd","bundles":[{}]}`,
		"not a digest":  `{"version":1,"narSha256":"` + strings.Repeat("zz", 32) + `","bundles":[{}]}`,
		"bundles a map": `{"version":1,` + good + `,"bundles":{}}`,
	} {
		if _, err := ParseProvenance([]byte(s)); !errors.Is(err, ErrProvenance) {
			t.Errorf("%s: %v, want ErrProvenance", what, err)
		}
	}
	// DecodeProvenance checks only the JSON and the version.
	if _, err := DecodeProvenance([]byte(`{"version":1,"narSha256":"00","bundles":[]}`)); err != nil {
		t.Errorf("DecodeProvenance: %v", err)
	}
	if _, err := DecodeProvenance([]byte(`{"version":2}`)); !errors.Is(err, ErrProvenance) {
		t.Errorf("DecodeProvenance of version 2: %v", err)
	}
}
