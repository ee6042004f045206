package config

import (
	"errors"
	"fmt"
)

// ErrNoLabels: a runner without labels would never get a job.
var ErrNoLabels = errors.New("no labels: the runner would never get a job; pass --labels, e.g. --labels nix")

// LabelSource says where RegistrationLabels took the labels from.
type LabelSource int

const (
	// LabelsFromConfig: the config's runner.labels, which win as in
	// forgejo-runner (a --labels flag is then ignored).
	LabelsFromConfig LabelSource = iota
	// LabelsFromFlag: the comma-separated --labels.
	LabelsFromFlag
	// LabelsFromNix: none given; derived from the host's Nix
	// (DefaultLabels), a proposal an operator may edit.
	LabelsFromNix
)

// RegistrationLabels picks the labels to register with, as forgejo-runner
// does: the config's runner.labels if it has any, else flag (a
// comma-separated list), else the labels DefaultLabels derives from the
// host's Nix configuration, which hostNix reads only then. The labels are
// checked (ParseLabels); none at all is ErrNoLabels.
func (c *Config) RegistrationLabels(flag string, hostNix func() (map[string]string, error)) ([]string, LabelSource, error) {
	var labels []string
	var src LabelSource
	switch {
	case len(c.Runner.Labels) > 0:
		labels, src = c.Runner.Labels, LabelsFromConfig
	case flag != "":
		labels, src = SplitLabels(flag), LabelsFromFlag
	default:
		nixCfg, err := hostNix()
		if err != nil {
			return nil, LabelsFromNix, fmt.Errorf("cannot derive labels from the host's Nix (%v); pass --labels, e.g. --labels nix", err)
		}
		labels, src = DefaultLabels(nixCfg), LabelsFromNix
	}
	if err := CheckRegistrationLabels(labels); err != nil {
		return nil, src, err
	}
	return labels, src, nil
}

// CheckRegistrationLabels checks labels to register with: at least one
// (ErrNoLabels), each valid (ParseLabels).
func CheckRegistrationLabels(labels []string) error {
	if len(labels) == 0 {
		return ErrNoLabels
	}
	_, err := ParseLabels(labels)
	return err
}

// JobLabels are the label names the daemon declares and matches jobs
// against: the config's runner.labels if it has any (they win, as in
// forgejo-runner), else those the registration recorded.
func (c *Config) JobLabels(registered []string) ([]string, error) {
	src := registered
	if len(c.Runner.Labels) > 0 {
		src = c.Runner.Labels
	}
	return LabelNames(src)
}

// BuilderID is the builder id the runner records in provenance:
// provenix.builder_id, else "forgejo-runner:<name>" after the runner's
// registration, so that one key has one builder id.
func (c *Config) BuilderID(runnerName string) string {
	return c.Provenix.BuilderIDFor(runnerName)
}
