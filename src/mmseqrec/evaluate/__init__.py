"""mmseqrec.evaluate"""
