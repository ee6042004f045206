package cachelayout

import (
	"encoding/json"
	"errors"
	"reflect"
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
// writes it (json.MarshalIndent with two spaces, Provenance.Marshal): the format must not
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

// Marshal writes what json.MarshalIndent writes, byte for byte, for
// bundles as they come (compact from a result, indented from an older
// sidecar), with or without a quorum, and with what json.Marshal escapes.
func TestProvenanceMarshal(t *testing.T) {
	p, err := ParseProvenance([]byte(sidecar))
	if err != nil {
		t.Fatal(err)
	}
	compact := json.RawMessage(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","dsseEnvelope":{"payload":"eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjEifQ==","signatures":[{"sig":"MEUCIQ+/=","keyid":""}],"payloadType":"application/vnd.in-toto+json"},"n":[1,2.5e3,true,false,null,{},[]]}`)
	spaced := json.RawMessage(" {\n\t\"a\" : [ 1 , \"x y\" ] ,\r\n \"b\":{ } }\n\t")
	html := json.RawMessage(`{"s":"<script>&amp;` + "\u2028\u2029" + `</script>","é":"\u00e9\u003c"}`)
	cases := map[string]*Provenance{
		"doc example":      p,
		"no quorum":        {Version: 1, StorePath: p.StorePath, NarSHA256: p.NarSHA256, Bundles: []json.RawMessage{compact}},
		"several bundles":  {Version: 1, StorePath: p.StorePath, NarSHA256: p.NarSHA256, Bundles: []json.RawMessage{compact, spaced, p.Bundles[0]}, Quorum: &QuorumInfo{Verdict: "agreed", Min: 2, Distinct: "builder", Agreeing: []string{"a", "b"}}},
		"escaped":          {Version: 1, StorePath: "/nix/store/x<&>\"\\", NarSHA256: p.NarSHA256, Bundles: []json.RawMessage{html, compact}},
		"no bundles (nil)": {Version: 1, StorePath: p.StorePath},
		"no bundles":       {Version: 1, StorePath: p.StorePath, Bundles: []json.RawMessage{}},
		"a nil bundle":     {Version: 1, StorePath: p.StorePath, Bundles: []json.RawMessage{nil, compact}},
		"empty agreeing":   {Version: 1, Bundles: []json.RawMessage{compact}, Quorum: &QuorumInfo{Agreeing: []string{}}},
		"nil agreeing":     {Version: -3, Bundles: []json.RawMessage{compact}, Quorum: &QuorumInfo{Min: -1}},
		"odd strings": {Version: 1, StorePath: "tab\there \x00\x1f\x7f é \xff", NarSHA256: "\u2028",
			Bundles: []json.RawMessage{compact}, Quorum: &QuorumInfo{Verdict: "a\"b", Distinct: "<", Agreeing: []string{"x&y", "\\", "ok"}, UnverifiedByQuorum: true}},
	}
	for what, p := range cases {
		want, err := json.MarshalIndent(p, "", "  ")
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		got, err := p.Marshal()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if string(got) != string(want) {
			t.Errorf("%s: Marshal wrote\n%s\nMarshalIndent writes\n%s", what, got, want)
		}
		// Appended to a buffer of earlier bytes, with room to spare.
		buf := append(make([]byte, 0, 1<<16), "earlier"...)
		if got, err := p.AppendMarshal(buf); err != nil || string(got) != "earlier"+string(want) {
			t.Errorf("%s: AppendMarshal wrote %q, %v", what, got, err)
		}
		var back Provenance
		if err := json.Unmarshal(got, &back); err != nil || len(back.Bundles) != len(p.Bundles) {
			t.Errorf("%s: read back: %v", what, err)
		}
	}
	// Marshal writes every field by name: a field it does not know of
	// would be lost from every sidecar.
	if n := reflect.TypeFor[Provenance]().NumField(); n != 5 {
		t.Errorf("Provenance has %d fields: teach Marshal the new ones, then this test", n)
	}
	if n := reflect.TypeFor[QuorumInfo]().NumField(); n != 5 {
		t.Errorf("QuorumInfo has %d fields: teach Marshal the new ones, then this test", n)
	}
	// A bundle that is not JSON is refused, as MarshalIndent refuses it,
	// instead of making the sidecar unreadable.
	for _, bad := range []string{`{"a":`, `{} {}`, `{"a":1}x`, "\xff"} {
		p := &Provenance{Version: 1, Bundles: []json.RawMessage{compact, json.RawMessage(bad)}}
		if b, err := p.Marshal(); !errors.Is(err, ErrProvenance) {
			t.Errorf("bundle %q: %v, want ErrProvenance\n%s", bad, err, b)
		}
		if _, err := json.MarshalIndent(p, "", "  "); err == nil {
			t.Errorf("bundle %q: MarshalIndent accepts it", bad)
		}
	}
}

// FuzzProvenanceMarshal: for any bundle bytes, Marshal and MarshalIndent
// agree on the bytes, or both refuse.
func FuzzProvenanceMarshal(f *testing.F) {
	f.Add([]byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}`))
	f.Add([]byte(" [1, {\"a<\": \"&\u2028\"}]\n"))
	f.Add([]byte(`"x"`))
	f.Fuzz(func(t *testing.T, bundle []byte) {
		p := &Provenance{Version: 1, StorePath: "/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-busybox", Bundles: []json.RawMessage{bundle},
			Quorum: &QuorumInfo{Verdict: string(bundle), Agreeing: []string{string(bundle)}}}
		want, werr := json.MarshalIndent(p, "", "  ")
		got, gerr := p.Marshal()
		if (werr == nil) != (gerr == nil) || string(got) != string(want) {
			t.Fatalf("Marshal: %q, %v\nMarshalIndent: %q, %v", got, gerr, want, werr)
		}
	})
}
