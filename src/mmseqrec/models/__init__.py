"""mmseqrec.models"""
