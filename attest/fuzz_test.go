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
// decoding Verify applies after the signature check: sigstore-go's strict
// protojson decode, then parseStatement with the payload's raw predicate.
// It must not panic, must fail inside the ErrVerification tree, and an
// accepted Statement must read the same when its predicate is decoded
// through the protobuf Struct instead of the raw JSON (the shortcut
// parseStatement takes must not change what is trusted).
func FuzzStatement(f *testing.F) {
	st, err := NewStatement(testBuild("https://builders.example/fuzz"))
	if err != nil {
		f.Fatal(err)
	}
	good, err := protojson.Marshal(st)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"_type":"https://in-toto.io/Statement/v1"}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		var st intoto.Statement
		if protojson.Unmarshal(payload, &st) != nil {
			return // sigstore-go refuses it before we see it
		}
		p, err := parseStatement(&st, payloadPredicate(payload))
		p2, err2 := parseStatement(&st, nil)
		if (err == nil) != (err2 == nil) {
			t.Fatalf("raw predicate: %v; re-encoded predicate: %v", err, err2)
		}
		if err != nil {
			if !errors.Is(err, ErrVerification) || !errors.Is(err2, ErrVerification) {
				t.Fatalf("error outside the ErrVerification tree: %v / %v", err, err2)
			}
			return
		}
		if p.BuilderID != p2.BuilderID || p.DrvPath != p2.DrvPath || p.System != p2.System ||
			!reflect.DeepEqual(p.Outputs, p2.Outputs) || !proto.Equal(p.Predicate, p2.Predicate) ||
			!reflect.DeepEqual(p.External, p2.External) || !reflect.DeepEqual(p.Internal, p2.Internal) {
			t.Fatalf("the two predicate decodings disagree:\n%+v\n%+v", p, p2)
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
		if protojson.Unmarshal(p, &st) == nil {
			_, err = parseStatement(&st, payloadPredicate(p))
		}
		if name == "golden" && err != nil {
			t.Errorf("seed %s: %v", name, err)
		}
	}
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
