package queue

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"codeberg.org/provenix/provenix/internal/fuzzseed"
)

func TestDecodeResult(t *testing.T) {
	good, err := testResult(1).Encode()
	if err != nil {
		t.Fatal(err)
	}
	if r, err := DecodeResult(good); err != nil || r.MsgID() != testResult(1).MsgID() {
		t.Fatalf("round trip: %v", err)
	}
	mutate := func(f func(m map[string]any)) []byte {
		var m map[string]any
		json.Unmarshal(good, &m)
		f(m)
		b, _ := json.Marshal(m)
		return b
	}
	out := func(m map[string]any) map[string]any { return m["outputs"].([]any)[0].(map[string]any) }
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"not json", []byte("{"), ErrMalformed},
		{"trailing data", append(append([]byte{}, good...), []byte(" {}")...), ErrMalformed},
		{"unknown field", mutate(func(m map[string]any) { m["extra"] = 1 }), ErrMalformed},
		{"wrong version", mutate(func(m map[string]any) { m["version"] = 2 }), ErrMalformed},
		{"tenant with a dot", mutate(func(m map[string]any) { m["tenant"] = "a.b" }), ErrMalformed},
		{"system wildcard", mutate(func(m map[string]any) { m["system"] = ">" }), ErrMalformed},
		{"drv not a drv", mutate(func(m map[string]any) { m["drvPath"] = "/nix/store/x" }), ErrMalformed},
		{"no outputs", mutate(func(m map[string]any) { m["outputs"] = []any{} }), ErrMalformed},
		{"uppercase hash", mutate(func(m map[string]any) { o := out(m); o["narHash"] = strings.ToUpper(o["narHash"].(string)) }), ErrMalformed},
		{"short hash", mutate(func(m map[string]any) { out(m)["narHash"] = "abcd" }), ErrMalformed},
		{"relative path", mutate(func(m map[string]any) { out(m)["path"] = "nix/store/x" }), ErrMalformed},
		// A newline in the hash part passed and made the vote's NATS key
		// invalid, which the pusher retried forever (issue 11, attack 1).
		{"newline in hash part", mutate(func(m map[string]any) { out(m)["path"] = "/nix/store/" + strings.Repeat("1", 30) + "\n\n-hello" }), ErrMalformed},
		{"e in hash part", mutate(func(m map[string]any) { out(m)["path"] = "/nix/store/" + strings.Repeat("e", 32) + "-hello" }), ErrMalformed},
		{"name with a leading dot", mutate(func(m map[string]any) { out(m)["path"] = "/nix/store/" + strings.Repeat("1", 32) + "-.hello" }), ErrMalformed},
		{"drv with a bad hash part", mutate(func(m map[string]any) { m["drvPath"] = "/nix/store/" + strings.Repeat("1", 31) + "\n-hello.drv" }), ErrMalformed},
		{"bad reference", mutate(func(m map[string]any) { out(m)["references"] = []any{"/nix/store/x"} }), ErrMalformed},
		{"source without CA", mutate(func(m map[string]any) { m["sources"] = []any{out(m)} }), ErrMalformed},
		{"no staging key", mutate(func(m map[string]any) { out(m)["stagingKey"] = "" }), ErrMalformed},
		{"no bundle", mutate(func(m map[string]any) { delete(m, "bundle") }), ErrMalformed},
		{"null bundle", mutate(func(m map[string]any) { m["bundle"] = nil }), ErrMalformed},
		{"closure not under closure/", mutate(func(m map[string]any) { m["closure"] = "nar/" + out(m)["narHash"].(string) }), ErrMalformed},
		{"closure with a slash", mutate(func(m map[string]any) { m["closure"] = "closure/../x" }), ErrMalformed},
		{"oversize", make([]byte, MaxResultSize+1), ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := DecodeResult(tc.in); !errors.Is(err, tc.want) {
				t.Fatalf("DecodeResult = %v, want %v", err, tc.want)
			}
		})
	}
}

// resultSeeds are valid encoded results and malformed variants of them,
// committed as FuzzDecodeResult's corpus.
func resultSeeds(t testing.TB) map[string][]byte {
	t.Helper()
	good, err := testResult(1).Encode()
	if err != nil {
		t.Fatal(err)
	}
	withClosure := testResult(2)
	withClosure.Closure = ClosureKey(withClosure.DrvPath)
	withClosure.Outputs = append(withClosure.Outputs, Output{Name: "dev", Path: "/nix/store/" + strings.Repeat("1", 32) + "-hello-dev",
		NarHash: withClosure.Outputs[0].NarHash, NarSize: 1, StagingKey: withClosure.Outputs[0].StagingKey, NixSig: "k-1:c2ln"})
	closure, err := withClosure.Encode()
	if err != nil {
		t.Fatal(err)
	}
	replace := func(old, new string) []byte {
		b := bytes.Replace(good, []byte(old), []byte(new), 1)
		if bytes.Equal(b, good) {
			t.Fatalf("seed: %q not in %s", old, good)
		}
		return b
	}
	return map[string][]byte{
		"good":             good,
		"closure-two-outs": closure,
		"version-2":        replace(`"version":1`, `"version":2`),
		"tenant-dot":       replace(`"tenant":"t1"`, `"tenant":"t.1"`),
		"unknown-field":    replace(`"version":1`, `"version":1,"extra":true`),
		"trailing":         append(append([]byte{}, good...), "{}"...),
		"bundle-null":      replace(`"bundle":{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}`, `"bundle":null`),
		"hash-upper":       bytes.ToUpper(good),
		"duplicate-key":    replace(`"tenant":"t1"`, `"tenant":"t1","tenant":"t2"`),
		"outputs-twice":    replace(`"outputs":[`, `"outputs":null,"outputs":[`),
		"escaped":          replace(`"tenant":"t1"`, `"tenant":"\u00741"`),
		"empty-object":     []byte(`{}`),
		"array":            []byte(`[]`),
	}
}

func TestFuzzCorpus(t *testing.T) {
	fuzzseed.Sync(t, "FuzzDecodeResult", resultSeeds(t), false)
}

// FuzzDecodeResult decodes hostile result messages. Errors must match the
// package's sentinels; whatever decodes must re-encode, and decoding that
// encoding must give the same result and the same bytes again (a fixed
// point): the pusher and anything that re-publishes a result agree on it.
//
// Its seeds are the committed testdata/fuzz/FuzzDecodeResult/ (resultSeeds).
func FuzzDecodeResult(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeResult(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error outside the sentinels: %v", err)
			}
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("decoded result does not validate: %v", err)
		}
		again, err := r.Encode()
		if err != nil {
			t.Fatalf("decoded result does not encode: %v", err)
		}
		r2, err := DecodeResult(again)
		if err != nil {
			t.Fatalf("re-encoded result does not decode: %v\n%s", err, again)
		}
		// encoding/json compacts a RawMessage when it encodes it: compare
		// the bundle by its compact form, everything else exactly.
		var c1, c2 bytes.Buffer
		if err := json.Compact(&c1, r.Bundle); err != nil {
			t.Fatalf("accepted bundle is not JSON: %v", err)
		}
		json.Compact(&c2, r2.Bundle)
		b1, b2 := *r, *r2
		b1.Bundle, b2.Bundle = nil, nil
		if !reflect.DeepEqual(b1, b2) || c1.String() != c2.String() || r2.MsgID() != r.MsgID() {
			t.Fatalf("round trip changed the result:\n%+v\n%+v", r, r2)
		}
		third, err := r2.Encode()
		if err != nil || !bytes.Equal(third, again) {
			t.Fatalf("encoding is not a fixed point:\n%s\n%s", again, third)
		}
	})
}
