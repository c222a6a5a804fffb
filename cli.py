def main(): print("medqk")
