package action

import (
	"fmt"
	"strings"

	"codeberg.org/provenix/provenix/cachelayout"
)

// outputs sets the step outputs and writes the job summary. Outside an
// Actions step (no GITHUB_OUTPUT) the outputs are printed instead.
func (s *step) outputs(verdict string) error {
	var paths, hashes, bundles []string
	seen := map[string]bool{}
	for _, r := range s.rows {
		paths = append(paths, r.StorePath)
		hashes = append(hashes, r.NarSHA256)
		if r.Bundle != "" && !seen[r.Bundle] {
			seen[r.Bundle] = true
			bundles = append(bundles, r.Bundle)
		}
	}
	outs := [][2]string{
		{"store-paths", strings.Join(paths, "\n")},
		{"nar-hashes", strings.Join(hashes, "\n")},
		{"bundle-paths", strings.Join(bundles, "\n")},
		{"verdict", verdict},
	}
	if s.cfg.Getenv("GITHUB_OUTPUT") == "" {
		for _, o := range outs {
			fmt.Fprintf(s.cfg.Stdout, "%s: %s\n", o[0], strings.ReplaceAll(o[1], "\n", " "))
		}
	} else {
		for _, o := range outs {
			s.gha.SetOutput(o[0], o[1])
		}
	}
	if s.cfg.Getenv("GITHUB_STEP_SUMMARY") != "" {
		s.gha.AddStepSummary(Summary(s.rows, s.signerNote, s.in.cacheURL))
	}
	return nil
}

// Summary is the job summary: a markdown table, one row per output.
func Summary(rows []Row, signer, cacheURL string) string {
	var b strings.Builder
	b.WriteString("### Provenix\n\n")
	if signer != "" {
		fmt.Fprintf(&b, "Signed by: %s\n\n", signer)
	}
	b.WriteString("| output | NAR sha256 | builder | verdict |\n|---|---|---|---|\n")
	for _, r := range rows {
		v := r.Verdict
		if r.Duplicate {
			v += " (already published)"
		}
		if cacheURL != "" {
			v += fmt.Sprintf(" ([narinfo](%s/%s), [provenance](%s/%s))", cacheURL, cachelayout.NarinfoKey(r.StorePath), cacheURL, cachelayout.ProvenanceKey(r.StorePath))
		}
		fmt.Fprintf(&b, "| `%s` | `%s` | `%s` | %s |\n", r.StorePath, r.NarSHA256, r.BuilderID, v)
	}
	return b.String()
}
