"""FHIR vocabulary every layer shares (references, code systems): the floor below the layers."""
