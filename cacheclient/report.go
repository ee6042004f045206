package cacheclient

import (
	"fmt"
	"io"
	"time"
)

// WriteText writes r for a person: the verdict, the NAR, and who built it
// from what, when, for each attestation. It is what `provenix verify`
// prints and the workflow action shows in its step log.
func (r *Report) WriteText(w io.Writer) {
	mark := "✗"
	if r.Verified {
		mark = "✓"
	}
	fmt.Fprintf(w, "%s %s\n", mark, r.StorePath)
	fmt.Fprintf(w, "  NAR sha256 %s, %d bytes (from %s)\n", r.NarSHA256, r.NarSize, r.From)
	if r.NarinfoSig != "" {
		fmt.Fprintf(w, "  narinfo signature: %s\n", r.NarinfoSig)
	}
	if r.ContentAddress != "" {
		fmt.Fprintf(w, "  content address: %s\n", r.ContentAddress)
	}
	for i, a := range r.Attestations {
		if !a.Verified {
			fmt.Fprintf(w, "  attestation %d: rejected: %s\n", i+1, a.Error)
			continue
		}
		fmt.Fprintf(w, "  attestation %d: built by %q (key %s)\n", i+1, a.Builder, a.KeyID)
		fmt.Fprintf(w, "    from %s on %s", a.Derivation, a.System)
		if a.Installable != nil {
			fmt.Fprintf(w, " (%s)", a.Installable)
		}
		fmt.Fprintln(w)
		if a.Source != nil {
			fmt.Fprintf(w, "    source %s at %s\n", a.Source.Repository, a.Source.Revision)
		}
		if wf := a.Workflow; wf != nil {
			fmt.Fprintf(w, "    forge job %s of %s/%s at %s (%s), captured by %s\n", wf.Job, wf.Server, wf.Repository, wf.Sha, wf.Ref, wf.Capture)
		}
		if a.Invocation != "" {
			fmt.Fprintf(w, "    invocation %s\n", a.Invocation)
		}
		if a.FinishedOn != nil {
			fmt.Fprintf(w, "    finished %s with Nix %s\n", a.FinishedOn.UTC().Format(time.RFC3339), a.NixVersion)
		}
	}
	if v := r.VSA; v != nil {
		switch {
		case !v.Checked && v.Error != "":
			fmt.Fprintf(w, "  verification summary: %s\n", v.Error)
		case !v.Checked:
			fmt.Fprintf(w, "  verification summary: %s\n", v.Trust)
		case v.Verified:
			fmt.Fprintf(w, "  verification summary: %s by %q (%s, key %s) at %s, levels %v, policy sha256 %s\n",
				v.Result, v.Verifier, v.Trust, v.KeyID, v.TimeVerified.UTC().Format(time.RFC3339), v.Levels, v.PolicySHA256)
		default:
			fmt.Fprintf(w, "  verification summary: rejected: %s\n", v.Error)
		}
	}
	fmt.Fprintf(w, "  verdict: %s\n", r.Verdict)
	if r.Reason != "" {
		fmt.Fprintf(w, "  reason: %s\n", r.Reason)
	}
}

// VerifiedAttestations is how many of r's bundles verified.
func (r *Report) VerifiedAttestations() int {
	n := 0
	for _, a := range r.Attestations {
		if a.Verified {
			n++
		}
	}
	return n
}
