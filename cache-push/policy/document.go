package policy

import (
	"encoding/json"
	"fmt"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cachelayout"
)

// Document is the policy as the cache publishes it
// (cachelayout.PolicyDocument, JSON): the file's text and the builder keys
// it names, so that its digest, which verification summaries carry, pins
// whom the policy trusts and not only how the file reads. The same policy
// gives the same bytes.
func (p *Policy) Document() ([]byte, error) {
	d := cachelayout.PolicyDocument{Version: cachelayout.PolicyDocumentVersion, Policy: string(p.source)}
	for id, k := range p.keys {
		pem, err := attest.MarshalPublicKey(k)
		if err != nil {
			return nil, fmt.Errorf("policy document: builder %s: %w", id, err)
		}
		if d.Keys == nil {
			d.Keys = map[string]string{}
		}
		d.Keys[id] = string(pem)
	}
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("policy document: %w", err)
	}
	return append(b, '\n'), nil
}
