package attest

import (
	"context"
	"encoding/json"
	"fmt"

	intoto "github.com/in-toto/attestation/go/v1"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"google.golang.org/protobuf/encoding/protojson"
)

// Sign wraps st in a DSSE envelope signed by s and returns the Sigstore
// bundle (v0.3) as JSON.
func Sign(ctx context.Context, st *intoto.Statement, s sign.Keypair) ([]byte, error) {
	return signBundle(st, s, sign.BundleOptions{Context: ctx})
}

// signBundle is Sign with sigstore-go's options (transparency logs).
func signBundle(st *intoto.Statement, s sign.Keypair, opts sign.BundleOptions) ([]byte, error) {
	payload, err := protojson.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("attest: encode statement: %w", err)
	}
	return signPayload(payload, s, opts)
}

// signPayload signs payload, a Statement's bytes, into a bundle.
func signPayload(payload []byte, s sign.Keypair, opts sign.BundleOptions) ([]byte, error) {
	pb, err := sign.Bundle(&sign.DSSEData{Data: payload, PayloadType: PayloadType}, s, opts)
	if err != nil {
		return nil, fmt.Errorf("attest: sign bundle: %w", err)
	}
	b, err := bundle.NewBundle(pb)
	if err != nil {
		return nil, fmt.Errorf("attest: sign bundle: %w", err)
	}
	out, err := json.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("attest: encode bundle: %w", err)
	}
	return out, nil
}
