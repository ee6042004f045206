package vsa_test

import (
	"reflect"
	"testing"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/internal/testkey"
	"codeberg.org/provenix/provenix/vsa"
)

// FuzzVerify: no input makes reading or verifying a summary panic, and
// nothing but the signed summary verifies.
//
//	go test -run '^$' -fuzz FuzzVerify -fuzztime 30s ./vsa/
func FuzzVerify(f *testing.F) {
	signer, key := testkey.Signer(f)
	good, err := vsa.Sign(f.Context(), summary(), signer)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}`))
	v, err := vsa.NewVerifier(nil, attest.WithKeys(vsa.TrustedVerifier{ID: verifierID, PublicKey: key.Public()}))
	if err != nil {
		f.Fatal(err)
	}
	signed, err := vsa.InspectUnverified(good)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		vsa.InspectUnverified(b)
		got, err := v.Verify(b, expect())
		if err != nil {
			return
		}
		if got.Result != vsa.Passed {
			t.Fatalf("verified a summary that did not pass: %+v", got.Summary)
		}
		if !reflect.DeepEqual(got.Summary, signed) {
			t.Fatalf("verified a summary other than the one signed:\n got %+v\nwant %+v", got.Summary, signed)
		}
	})
}
