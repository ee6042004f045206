package attest

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	intoto "github.com/in-toto/attestation/go/v1"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"codeberg.org/provenix/provenix/internal/fuzzseed"
)

// Seed corpora live in testdata/fuzz/<FuzzName>/ (see internal/fuzzseed),
// so plain `go test` (and CI) runs every seed. TestFuzzCorpus derives them
// from the golden bundle.

const goldenBuilder = "https://builders.example/golden"

func goldenFiles(t testing.TB) (bundleJSON []byte, pub []byte) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "golden.bundle.json"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := os.ReadFile(filepath.Join("testdata", "golden.pub"))
	if err != nil {
		t.Fatal(err)
	}
	return b, p
}

// envelopeOf returns the DSSE envelope of a bundle, or nil when it has none.
func envelopeOf(bundleJSON []byte) *bundle.Envelope {
	var b bundle.Bundle
	if b.UnmarshalJSON(bundleJSON) != nil {
		return nil
	}
	env, err := b.Envelope()
	if err != nil {
		return nil
	}
	return env
}

func payloadOf(t testing.TB, bundleJSON []byte) []byte {
	t.Helper()
	env := envelopeOf(bundleJSON)
	if env == nil {
		t.Fatal("bundle has no DSSE envelope")
	}
	p, err := env.DecodeB64Payload()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// FuzzVerifyBundle feeds hostile bundles to the verifier the pusher and
// `provenix verify` use. It trusts two builders: the golden bundle's key
// (so the committed seeds include a bundle that verifies) and a key made
// here. Whatever the input, Verify must not panic, must fail inside the
// ErrVerification tree, and may only succeed for a bundle whose signed
// parts — payload type and payload bytes — are exactly those a trusted
// key signed, naming the builder that key is bound to.
func FuzzVerifyBundle(f *testing.F) {
	const builder = "https://builders.example/fuzz"
	golden, goldenPub := goldenFiles(f)
	gk, err := ParsePublicKey(goldenPub)
	if err != nil {
		f.Fatal(err)
	}
	k, s := newKey(f)
	fresh := signBuild(f, testBuild(builder), s, nil)
	f.Add(fresh)
	f.Add(golden)
	f.Add([]byte("{}"))
	v, err := NewVerifier(nil, WithKeys(TrustedBuilder{ID: builder, PublicKey: k.Public()}, TrustedBuilder{ID: goldenBuilder, PublicKey: gk}))
	if err != nil {
		f.Fatal(err)
	}
	// What each builder really signed.
	genuine := map[string][]byte{builder: payloadOf(f, fresh), goldenBuilder: payloadOf(f, golden)}
	wantOutputs := testBuild(builder).Outputs
	want := []Subject{{Path: testOut, NarHash: sha256.Sum256([]byte("nar"))}}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := v.Verify(b, want)
		_, _ = InspectUnverified(b) // must not panic either
		if err != nil {
			if !errors.Is(err, ErrVerification) {
				t.Fatalf("error outside the ErrVerification tree: %v", err)
			}
			return
		}
		signed, ok := genuine[got.BuilderID]
		if !ok || got.Builder.ID != got.BuilderID {
			t.Fatalf("accepted a bundle for builder %q (signer bound to %q)", got.BuilderID, got.Builder.ID)
		}
		env := envelopeOf(b)
		if env == nil {
			t.Fatal("accepted a bundle without a DSSE envelope")
		}
		payload, err := env.DecodeB64Payload()
		if err != nil || !bytes.Equal(payload, signed) || env.PayloadType != PayloadType {
			t.Fatalf("accepted a payload that differs from the one signed for %s: %q (%s)", got.BuilderID, payload, env.PayloadType)
		}
		if !reflect.DeepEqual(got.Outputs, wantOutputs) || got.DrvPath != testDrv {
			t.Fatalf("accepted statement says %s %+v, signed %s %+v", got.DrvPath, got.Outputs, testDrv, wantOutputs)
		}
	})
}

// FuzzStatement feeds hostile Statement JSON (a DSSE payload) through the
// decoding Verify applies after the signature check: splitStatement (one
// protojson pass, the predicate cut out), then parseStatement with the
// predicate's raw JSON. It must not panic, must fail inside the
// ErrVerification tree, and must accept exactly what the decoding it
// replaced accepted, reading it the same: sigstore-go's strict protojson
// decode of the whole Statement (Envelope.Statement), then parseStatement
// with the raw predicate, which in turn must read the same as with the
// predicate decoded through the protobuf Struct.
func FuzzStatement(f *testing.F) {
	f.Add(statementPayload(f, "https://builders.example/fuzz"))
	f.Add([]byte(`{"_type":"https://in-toto.io/Statement/v1"}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		s1, pred1, errSplit := splitStatement(payload)
		var p1 *Provenance
		err1 := errSplit
		if errSplit == nil {
			p1, err1 = parseStatement(s1, pred1)
		}
		if err1 != nil && !errors.Is(err1, ErrVerification) {
			t.Fatalf("error outside the ErrVerification tree: %v", err1)
		}
		var st intoto.Statement
		if protojson.Unmarshal(payload, &st) != nil {
			// sigstore-go's Envelope.Statement refused it, before the
			// signer was known: splitStatement alone must refuse it too,
			// not parseStatement after it (that error blames the signer).
			if errSplit == nil {
				t.Fatalf("splitStatement accepted a statement protojson refuses: %+v", s1)
			}
			return
		}
		p, err := parseStatement(&st, payloadPredicate(payload))
		p2, err2 := parseStatement(&st, nil)
		if (err == nil) != (err2 == nil) {
			t.Fatalf("raw predicate: %v; re-encoded predicate: %v", err, err2)
		}
		if (err == nil) != (err1 == nil) {
			t.Fatalf("whole statement: %v; split statement: %v", err, err1)
		}
		if err != nil {
			if !errors.Is(err, ErrVerification) || !errors.Is(err2, ErrVerification) {
				t.Fatalf("error outside the ErrVerification tree: %v / %v", err, err2)
			}
			return
		}
		for _, q := range []*Provenance{p2, p1} {
			if p.BuilderID != q.BuilderID || p.DrvPath != q.DrvPath || p.System != q.System ||
				!reflect.DeepEqual(p.Outputs, q.Outputs) || !proto.Equal(p.Predicate, q.Predicate) ||
				!reflect.DeepEqual(p.External, q.External) || !reflect.DeepEqual(p.Internal, q.Internal) {
				t.Fatalf("the predicate decodings disagree:\n%+v\n%+v", p, q)
			}
		}
		whole := proto.Clone(p.Statement).(*intoto.Statement)
		whole.Predicate = nil
		if !proto.Equal(whole, p1.Statement) {
			t.Fatalf("the statement decodings disagree:\n%v\n%v", whole, p1.Statement)
		}
		if !isStorePath(p.DrvPath) || !strings.HasSuffix(p.DrvPath, ".drv") || p.System == "" {
			t.Fatalf("accepted derivation %q system %q", p.DrvPath, p.System)
		}
		for _, o := range p.Outputs {
			if !isStorePath(o.Path) || o.NarSize == 0 {
				t.Fatalf("accepted output %+v", o)
			}
			for _, r := range o.References {
				if !isStorePath(r) {
					t.Fatalf("accepted reference %q", r)
				}
			}
		}
	})
}

// readPayload is what Verify reads from a verified payload.
func readPayload(payload []byte) (*Provenance, error) {
	st, pred, err := splitStatement(payload)
	if err != nil {
		return nil, err
	}
	return parseStatement(st, pred)
}

// TestFuzzCorpus checks the committed seeds still say what they are meant
// to (the golden one verifies, mutants of signed parts do not); with
// PROVENIX_UPDATE_SEEDS=1 it rewrites them from the golden bundle.
func TestFuzzCorpus(t *testing.T) {
	golden, goldenPub := goldenFiles(t)
	env := func(f func(e map[string]any)) []byte {
		var m map[string]any
		if err := json.Unmarshal(golden, &m); err != nil {
			t.Fatal(err)
		}
		f(m["dsseEnvelope"].(map[string]any))
		b, _ := json.Marshal(m)
		return b
	}
	payload := payloadOf(t, golden)
	bundles := map[string][]byte{
		"golden":            golden,
		"payload-altered":   alterPayload(t, golden, func(p string) string { return strings.Replace(p, "x86_64-linux", "aarch64-linux", 1) }),
		"subject-swapped":   alterPayload(t, golden, func(p string) string { return strings.Replace(p, "-hello", "-hellp", 1) }),
		"payload-type":      env(func(e map[string]any) { e["payloadType"] = "application/json" }),
		"signature-flipped": env(func(e map[string]any) { flipSig(t, e) }),
		"no-signatures":     env(func(e map[string]any) { e["signatures"] = []any{} }),
		"two-signatures": env(func(e map[string]any) {
			sigs := e["signatures"].([]any)
			e["signatures"] = append(sigs, sigs[0])
		}),
		"truncated":  golden[:len(golden)/2],
		"media-v0.1": bytes.Replace(golden, []byte("bundle.v0.3+json"), []byte("bundle+json;version=0.1"), 1),
	}
	statements := map[string][]byte{
		"golden":         payload,
		"predicate-type": bytes.Replace(payload, []byte(PredicateType), []byte("https://slsa.dev/provenance/v0.2"), 1),
		"duplicate-predicate": bytes.Replace(payload, []byte(`"predicate":`),
			[]byte(`"predicate":{"buildDefinition":{"buildType":"x"}}, "predicate":`), 1),
		"narsize-fraction": bytes.Replace(payload, []byte(`"narSize":1234`), []byte(`"narSize":1234.5`), 1),
		// What a Struct refuses in a part of the predicate the typed
		// reader skips, and shapes of the predicate's value.
		"predicate-unknown-duplicate": bytes.Replace(payload, []byte(`"predicate":{`),
			[]byte(`"predicate":{"x":{"a":1,"a":2},`), 1),
		"predicate-unknown-overflow": bytes.Replace(payload, []byte(`"predicate":{`),
			[]byte(`"predicate":{"x":[1e999],`), 1),
		"predicate-unknown-bad-utf8": bytes.Replace(payload, []byte(`"predicate":{`),
			[]byte("\"predicate\":{\"x\":\"\xff\","), 1),
		"predicate-nested-duplicate": bytes.Replace(payload, []byte(`"predicate":{`),
			[]byte(`"predicate":{"x":[{"y":{"a":"\"}","\u0061":2}}],`), 1),
		"predicate-escaped-key": bytes.Replace(payload, []byte(`"predicate":`), []byte(`"pred\u0069cate" :`), 1),
		"predicate-null":        predicateValue(t, payload, `null`),
		"predicate-string":      predicateValue(t, payload, `"x"`),
		"predicate-capitalised": bytes.Replace(payload, []byte(`"predicate":`), []byte(`"Predicate":`), 1),
	}
	fuzzseed.Sync(t, "FuzzVerifyBundle", bundles, false)
	fuzzseed.Sync(t, "FuzzStatement", statements, false)
	pub, err := ParsePublicKey(goldenPub)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(nil, WithKeys(TrustedBuilder{ID: goldenBuilder, PublicKey: pub}))
	if err != nil {
		t.Fatal(err)
	}
	want := []Subject{{Path: testOut, NarHash: sha256.Sum256([]byte("nar"))}}
	for name := range bundles {
		b := fuzzseed.Read(t, "FuzzVerifyBundle", name)
		_, err := v.Verify(b, want)
		// The media type is not signed: an older bundle version with the
		// same envelope still verifies, and that is harmless.
		if (err == nil) != (name == "golden" || name == "media-v0.1") {
			t.Errorf("seed %s: Verify = %v", name, err)
		}
	}
	for name := range statements {
		var st intoto.Statement
		p := fuzzseed.Read(t, "FuzzStatement", name)
		err := protojson.Unmarshal(p, &st)
		if err == nil {
			_, err = parseStatement(&st, payloadPredicate(p))
		}
		// Each seed says what it is meant to: only the golden one and
		// the escaped key (the same statement) are provenance.
		ok := name == "golden" || name == "predicate-escaped-key"
		if (err == nil) != ok {
			t.Errorf("seed %s: %v", name, err)
		}
		if _, err := readPayload(p); (err == nil) != ok {
			t.Errorf("seed %s, split: %v", name, err)
		}
	}
}

// predicateValue is payload with the predicate's value replaced by v.
func predicateValue(t *testing.T, payload []byte, v string) []byte {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(payload, &m); err != nil {
		t.Fatal(err)
	}
	m["predicate"] = json.RawMessage(v)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func flipSig(t *testing.T, e map[string]any) {
	t.Helper()
	sig := e["signatures"].([]any)[0].(map[string]any)
	raw, err := base64.StdEncoding.DecodeString(sig["sig"].(string))
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)-1] ^= 1
	sig["sig"] = base64.StdEncoding.EncodeToString(raw)
}
