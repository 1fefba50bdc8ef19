// Package parity checks, feature by feature, that the Caddy configs in
// docs/proxymachine.md do what GitHub's ProxyMachine did. The configs are
// constants here, and TestDocShowsTheTestedConfigs fails when the page
// stops showing them verbatim.
package parity
