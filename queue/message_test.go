package queue

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
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
		{"no staging key", mutate(func(m map[string]any) { out(m)["stagingKey"] = "" }), ErrMalformed},
		{"no bundle", mutate(func(m map[string]any) { delete(m, "bundle") }), ErrMalformed},
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

func FuzzDecodeResult(f *testing.F) {
	good, _ := testResult(1).Encode()
	f.Add(good)
	withClosure := testResult(2)
	withClosure.Closure = ClosureKey(withClosure.DrvPath)
	b, _ := withClosure.Encode()
	f.Add(b)
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeResult(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error outside the sentinels: %v", err)
			}
			return
		}
		// Whatever decodes must re-encode and decode to the same message.
		again, err := r.Encode()
		if err != nil {
			t.Fatalf("decoded result does not encode: %v", err)
		}
		r2, err := DecodeResult(again)
		if err != nil || r2.MsgID() != r.MsgID() {
			t.Fatalf("round trip changed the result: %v", err)
		}
	})
}
